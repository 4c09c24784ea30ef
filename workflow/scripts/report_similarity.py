from ftdrift import smk
from ftdrift.report.frames import configure_methods
from ftdrift.report.similarity import write_similarity

smk.start(snakemake)
configure_methods(snakemake.params.methods)  # method order, labels and colours
write_similarity(
    pairs=snakemake.input.pairs,
    layers=snakemake.input.layers,
    best=snakemake.input.best,
    runs=snakemake.input.runs,
    task=snakemake.wildcards.task,
    method=snakemake.wildcards.method,
    reference=snakemake.params.reference,
    outputs=dict(snakemake.output.items()),
)
