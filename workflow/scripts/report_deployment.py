from ftdrift import smk
from ftdrift.report.deployment import write_deployment

smk.start(snakemake)
write_deployment(
    table=snakemake.input.table,
    memory=snakemake.input.memory,
    summary=snakemake.input.summary,
    outputs=dict(snakemake.output.items()),
)
