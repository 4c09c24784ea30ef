from ftdrift import smk
from ftdrift.report.frames import configure_methods
from ftdrift.report.methods import write_methods

smk.start(snakemake)
configure_methods(snakemake.params.methods)  # method order, labels and colours
write_methods(
    methods=snakemake.input.methods,
    closeness=snakemake.input.closeness,
    outputs=dict(snakemake.output.items()),
)
