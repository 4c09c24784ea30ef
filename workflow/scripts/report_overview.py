from ftdrift import smk
from ftdrift.report.overview import write_overview

smk.start(snakemake)
write_overview(
    runs=snakemake.input.runs,
    best=snakemake.input.best,
    verdicts=snakemake.input.verdicts,
    summary=snakemake.input.summary,
    stability=snakemake.input.stability,
    study=snakemake.params.study,
    planned=snakemake.params.planned,
    outputs=dict(snakemake.output.items()),
)
