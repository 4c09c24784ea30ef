from ftdrift import smk
from ftdrift.report.frames import configure_methods
from ftdrift.report.training import write_training

smk.start(snakemake)
configure_methods(snakemake.params.methods)  # method order, labels and colours
write_training(
    runs=snakemake.input.runs,
    logs=snakemake.input.logs,
    stability=snakemake.input.stability,
    task=snakemake.wildcards.task,
    planned=snakemake.params.planned,
    main_metric=snakemake.params.main_metric,
    outputs=dict(snakemake.output.items()),
)
