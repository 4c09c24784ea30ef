from ftdrift import smk
from ftdrift.core import io

smk.start(snakemake)  # before transformers is imported, so its log handler writes to the rule's log

from ftdrift.analysis.checkpoints import validate_run  # noqa: E402
from ftdrift.analysis.tuned import method_of  # noqa: E402
from ftdrift.study.grid import RUN_KEYS  # noqa: E402
from ftdrift.training import workdir  # noqa: E402

io.write_json(snakemake.output.check, validate_run(
    model_dir=snakemake.input.model,
    metrics_path=snakemake.input.metrics,
    predictions_path=snakemake.input.predictions,
    validation_path=snakemake.input.validation,
    model_cfg=snakemake.params.model,
    task_def=snakemake.params.task_def,
    method=method_of(snakemake.wildcards.method, snakemake.params.method),
    data_settings=snakemake.params.data,
))
# this job read the run's outputs from storage, so they are stored: the fine-tuning job's
# checkpoint mirror, kept for a re-run should the upload of its outputs have failed, can go
workdir.release({key: getattr(snakemake.wildcards, key) for key in RUN_KEYS})
