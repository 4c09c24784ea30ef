from ftdrift import smk
from ftdrift.report.frames import configure_methods
from ftdrift.report.overview import write_overview

smk.start(snakemake)
configure_methods(snakemake.params.methods)  # method order, labels and colours
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
