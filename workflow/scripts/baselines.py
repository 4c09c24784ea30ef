from ftdrift import smk

smk.start(snakemake)  # before the library loads numpy and torch: thread settings apply to them
from ftdrift.analysis.baselines import run_baselines  # noqa: E402

run_baselines(
    task=snakemake.wildcards.task,
    train_path=snakemake.input.train,
    dev_path=snakemake.input.dev,
    validation_path=snakemake.input.validation,
    out_path=snakemake.output.baselines,
    probe_path=snakemake.output.probe,
    model_cfg=snakemake.params.model,
    task_def=snakemake.params.task_def,
    data_settings=snakemake.params.data,
    batch_size=snakemake.params.batch_size,
    baselines_cfg=snakemake.params.baselines,
    pooling=snakemake.params.probe_pooling,
    precision=snakemake.params.precision,
)
