# a local rule (rules/data.smk): a plain copy, without smk.start (which imports torch)
from pathlib import Path

from ftdrift.study.storage import stage_file
from ftdrift.study.config import resolve_data_dir

source = snakemake.input[0] if snakemake.input else None
Path(snakemake.log[0]).parent.mkdir(parents=True, exist_ok=True)
Path(snakemake.log[0]).write_text(f"staging {source} as {snakemake.output[0]}\n")
stage_file(source, snakemake.output[0], snakemake.wildcards.path, resolve_data_dir(snakemake.config.get("data_dir")))
