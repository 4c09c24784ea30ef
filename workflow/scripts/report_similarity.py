from ftdrift import smk
from ftdrift.report.similarity import write_similarity

smk.start(snakemake)
write_similarity(
    full_vs_lora=snakemake.input.full_vs_lora,
    layers=snakemake.input.layers,
    best=snakemake.input.best,
    runs=snakemake.input.runs,
    task=snakemake.wildcards.task,
    outputs=dict(snakemake.output.items()),
)
