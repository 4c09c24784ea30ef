from ftdrift import smk
from ftdrift.tables import aggregate

smk.start(snakemake)
aggregate(
    metrics_paths=snakemake.input.metrics,
    drift_paths=snakemake.input.drift,
    weights_paths=snakemake.input.weights,
    weight_summary_paths=snakemake.input.weight_summaries,
    task_defs=snakemake.params.task_defs,
    analysis=snakemake.params.analysis,
    outputs=dict(snakemake.output.items()),
)
