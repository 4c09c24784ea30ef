from ftdrift import smk
from ftdrift.report.deployment import write_deployment
from ftdrift.report.frames import configure_methods

smk.start(snakemake)
configure_methods(snakemake.params.methods)  # method order, labels and colours
write_deployment(
    table=snakemake.input.table,
    memory=snakemake.input.memory,
    summary=snakemake.input.summary,
    outputs=dict(snakemake.output.items()),
)
