from ftdrift import smk
from ftdrift.analysis.tables import aggregate

smk.start(snakemake)
aggregate(
    metrics_paths=snakemake.input.metrics,
    predictions_paths=snakemake.input.predictions,
    train_log_paths=snakemake.input.train_logs,
    validation_paths=dict(zip(snakemake.params.tasks, snakemake.input.validation, strict=True)),
    drift_paths=snakemake.input.drift,
    weights_paths=snakemake.input.weights,
    check_paths=snakemake.input.checks,
    baseline_paths=dict(zip(snakemake.params.tasks, snakemake.input.baselines, strict=True)),
    task_defs=snakemake.params.task_defs,
    analysis=snakemake.params.analysis,
    planned=snakemake.params.planned,
    bootstrap_paths=snakemake.input.bootstrap,
    seed_floor_paths=snakemake.input.seed_floor,
    forgetting_paths=snakemake.input.forgetting,
    intruder_paths=snakemake.input.intruders,
    methods=snakemake.params.methods,
    outputs=dict(snakemake.output.items()),
)
