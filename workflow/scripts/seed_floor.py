from ftdrift import smk
from ftdrift.analysis.pairs import seed_floor_table
from ftdrift.core.io import write_csv

smk.start(snakemake)
seeds = snakemake.params.seeds
write_csv(snakemake.output.table,
          seed_floor_table(snakemake.params.setting, dict(zip(seeds, snakemake.input.stores, strict=True)),
                           dict(zip(seeds, snakemake.input.metrics, strict=True)), snakemake.params.metrics,
                           snakemake.params.bootstrap_resamples))
