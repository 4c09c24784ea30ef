from ftdrift import smk
from ftdrift.analysis.drift import drift_bootstrap, drift_table
from ftdrift.core.io import write_csv

smk.start(snakemake)
args = (snakemake.input.base, snakemake.input.run, snakemake.params.run, snakemake.params.metrics)
write_csv(snakemake.output.table, drift_table(*args))
write_csv(snakemake.output.bootstrap, drift_bootstrap(*args, snakemake.params.bootstrap_resamples))
