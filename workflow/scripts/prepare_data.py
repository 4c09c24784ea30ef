from pathlib import Path

from ftdrift import smk
from ftdrift.data.tasks import prepare_task
from ftdrift.study.storage import data_root

smk.start(snakemake)
prepare_task(
    snakemake.wildcards.task,
    snakemake.params.task_def,
    # the task's files as this job sees them (data_dir's, or their copies staged in the bucket);
    # none: the hub
    data_root(snakemake.input, snakemake.params.task_def),
    snakemake.params.data,
    Path(snakemake.output.splits).parent,
)
