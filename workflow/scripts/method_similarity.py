from ftdrift import smk
from ftdrift.analysis.pairs import method_similarity_tables
from ftdrift.core.io import write_csv

smk.start(snakemake)
stores = {(run["method"], run["lr"], int(run["batch_size"]), int(run["seed"])): path
          for run, path in zip(snakemake.params.runs, snakemake.input.stores, strict=True)}
pairs, layers = method_similarity_tables(snakemake.wildcards.task, snakemake.input.chosen, stores,
                                         snakemake.params.metrics, snakemake.params.bootstrap_resamples)
write_csv(snakemake.output.pairs, pairs)
write_csv(snakemake.output.layers, layers)
