from ftdrift import smk
from ftdrift.analysis.drift import drift_table
from ftdrift.core.io import write_csv

smk.start(snakemake)
write_csv(snakemake.output.table,
          drift_table(snakemake.input.base, snakemake.input.run, snakemake.params.run, snakemake.params.metrics))
