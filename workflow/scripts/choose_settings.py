from ftdrift import smk
from ftdrift.analysis.tables import write_chosen

smk.start(snakemake)
write_chosen(snakemake.input.metrics, snakemake.output.chosen)
