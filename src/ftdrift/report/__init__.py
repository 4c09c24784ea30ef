"""The HTML report's figures and pages (snakemake --report)."""
