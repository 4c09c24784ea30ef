from ftdrift import smk
from ftdrift.analysis.pairs import method_similarity_tables
from ftdrift.core.io import write_csv

smk.start(snakemake)
keys = [(run["method"], run["lr"], int(run["batch_size"]), int(run["seed"])) for run in snakemake.params.runs]
stores = dict(zip(keys, snakemake.input.stores, strict=True))
# each run's metrics.json (meta.snapshot_steps) checks its store
metrics_paths = dict(zip(keys, snakemake.input.metrics, strict=True))
pairs, layers = method_similarity_tables(snakemake.wildcards.task, snakemake.wildcards.method,
                                         snakemake.params.reference, snakemake.input.chosen, stores,
                                         snakemake.params.metrics, snakemake.params.bootstrap_resamples,
                                         metrics_paths=metrics_paths)
write_csv(snakemake.output.pairs, pairs)
write_csv(snakemake.output.layers, layers)
