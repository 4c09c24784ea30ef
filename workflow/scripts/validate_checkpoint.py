from ftdrift import smk
from ftdrift.core import io

smk.start(snakemake)  # before transformers is imported, so its log handler writes to the rule's log

from ftdrift.analysis.checkpoints import validate_run  # noqa: E402
from ftdrift.analysis.tuned import method_of  # noqa: E402

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
