# Report figures and tables: the rule's `params.kind` picks what ftdrift.report.plots writes.
from ftdrift import smk
from ftdrift.report.plots import run

smk.start(snakemake)
run(
    snakemake.params.kind,
    inputs=dict(snakemake.input.items()),
    outputs=dict(snakemake.output.items()),
    params=dict(snakemake.params.items()),
    wildcards=dict(snakemake.wildcards.items()),
)
