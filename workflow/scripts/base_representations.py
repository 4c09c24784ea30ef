from ftdrift import smk
from ftdrift.representations.base import base_representations

smk.start(snakemake)
base_representations(
    probe_path=snakemake.input.probe,
    store_path=snakemake.output.store,
    model_cfg=snakemake.params.model,
    task_def=snakemake.params.task_def,
    data_settings=snakemake.params.data,
    rep_settings=snakemake.params.representations,
    precision=snakemake.params.precision,
)
