from ftdrift import smk
from ftdrift.analysis.drift import drift_bootstrap, drift_table
from ftdrift.core.io import write_csv

smk.start(snakemake)
# the run's metrics.json (meta.snapshot_steps) checks its store
args = (snakemake.input.base, snakemake.input.run, snakemake.params.run, snakemake.params.metrics)
write_csv(snakemake.output.table, drift_table(*args, metrics_path=snakemake.input.metrics))
write_csv(snakemake.output.bootstrap,
          drift_bootstrap(*args, snakemake.params.bootstrap_resamples, metrics_path=snakemake.input.metrics))
