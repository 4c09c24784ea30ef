from pathlib import Path

from ftdrift import smk
from ftdrift.training.recipe import RunOutputs, finetune

smk.start(snakemake)
finetune(
    run=snakemake.params.run,
    task_def=snakemake.params.task_def,
    settings=snakemake.params.settings,
    model_cfg=snakemake.params.model,
    method_spec=snakemake.params.method,
    wandb_cfg=snakemake.config["wandb"],  # not a param: W&B settings do not change results
    data_dir=Path(snakemake.input.train).parent,
    work_dir=Path(snakemake.params.work_dir),
    outputs=RunOutputs(**{k: Path(v) for k, v in snakemake.output.items()}),
    threads=snakemake.threads,
    resolved_config={k: v for k, v in snakemake.config.items()},
    code_version=snakemake.params.code_version,
    base_store=Path(snakemake.input.base),
)
