from ftdrift import smk
from ftdrift.report.forgetting import write_forgetting

smk.start(snakemake)
write_forgetting(
    forgetting=snakemake.input.forgetting,
    out_of_task=snakemake.input.out_of_task,
    probe_transfer=snakemake.input.probe_transfer,
    best=snakemake.input.best,
    metric=snakemake.params.metric,
    pooling=snakemake.params.pooling,
    outputs=dict(snakemake.output.items()),
)
