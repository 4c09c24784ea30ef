from pathlib import Path

from ftdrift import smk
from ftdrift.data.tasks import prepare_task
from ftdrift.study.config import resolve_data_dir

smk.start(snakemake)
prepare_task(
    snakemake.wildcards.task,
    snakemake.params.task_def,
    resolve_data_dir(snakemake.config.get("data_dir")),
    snakemake.params.data,
    Path(snakemake.output.splits).parent,
)
