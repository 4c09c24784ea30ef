from ftdrift import smk
from ftdrift.report.forgetting import write_forgetting
from ftdrift.report.frames import configure_methods

smk.start(snakemake)
configure_methods(snakemake.params.methods)  # method order, labels and colours
write_forgetting(
    forgetting=snakemake.input.forgetting,
    out_of_task=snakemake.input.out_of_task,
    probe_transfer=snakemake.input.probe_transfer,
    best=snakemake.input.best,
    metric=snakemake.params.metric,
    pooling=snakemake.params.pooling,
    outputs=dict(snakemake.output.items()),
)
