from ftdrift import smk
from ftdrift.report.drift import write_drift

smk.start(snakemake)
write_drift(
    drift=snakemake.input.drift,
    runs=snakemake.input.runs,
    best=snakemake.input.best,
    task=snakemake.wildcards.task,
    outputs=dict(snakemake.output.items()),
)
