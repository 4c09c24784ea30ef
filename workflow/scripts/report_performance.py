from ftdrift import smk
from ftdrift.report.frames import configure_methods
from ftdrift.report.performance import write_performance

smk.start(snakemake)
configure_methods(snakemake.params.methods)  # method order, labels and colours
write_performance(
    runs=snakemake.input.runs,
    best=snakemake.input.best,
    baselines=snakemake.input.baselines,
    tasks=snakemake.params.tasks,
    qa_tasks=snakemake.params.qa_tasks,
    confidence=snakemake.params.confidence,
    drift_metric=snakemake.params.drift_metric,
    outputs=dict(snakemake.output.items()),
)
