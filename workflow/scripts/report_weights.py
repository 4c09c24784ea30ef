from ftdrift import smk
from ftdrift.report.weights import write_weights

smk.start(snakemake)
write_weights(
    weights=snakemake.input.weights,
    best=snakemake.input.best,
    intruders=snakemake.input.intruders,
    tasks=snakemake.params.tasks,
    lora_rank=snakemake.params.lora_rank,
    settings=snakemake.params.weights,
    outputs=dict(snakemake.output.items()),
)
