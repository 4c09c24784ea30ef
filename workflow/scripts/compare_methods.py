from ftdrift import smk
from ftdrift.analysis.method_comparison import compare_methods

smk.start(snakemake)
compare_methods(
    best=snakemake.input.best,
    runs=snakemake.input.runs,
    forgetting=snakemake.input.forgetting,
    pair_paths=snakemake.input.pairs,
    reference=snakemake.params.reference,
    analysis=snakemake.params.analysis,
    methods=snakemake.params.methods,
    outputs=dict(snakemake.output.items()),
)
