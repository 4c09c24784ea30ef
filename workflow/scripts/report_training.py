from ftdrift import smk
from ftdrift.report.training import write_training

smk.start(snakemake)
write_training(
    runs=snakemake.input.runs,
    logs=snakemake.input.logs,
    stability=snakemake.input.stability,
    task=snakemake.wildcards.task,
    planned=snakemake.params.planned,
    main_metric=snakemake.params.main_metric,
    outputs=dict(snakemake.output.items()),
)
