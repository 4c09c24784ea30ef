from ftdrift import smk
from ftdrift.report.frames import configure_methods
from ftdrift.report.weights import write_weights
from ftdrift.study.methods import ranks

smk.start(snakemake)
configure_methods(snakemake.params.methods)  # method order, labels and colours
write_weights(
    weights=snakemake.input.weights,
    best=snakemake.input.best,
    intruders=snakemake.input.intruders,
    tasks=snakemake.params.tasks,
    ranks=ranks(snakemake.params.methods),
    settings=snakemake.params.weights,
    outputs=dict(snakemake.output.items()),
)
