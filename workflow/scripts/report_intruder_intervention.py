from ftdrift import smk
from ftdrift.report.frames import configure_methods
from ftdrift.report.weights import write_intruder_intervention

smk.start(snakemake)
configure_methods(snakemake.params.methods)  # method order, labels and colours
write_intruder_intervention(table=snakemake.input.intervention, outputs=dict(snakemake.output.items()))
