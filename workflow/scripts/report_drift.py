from ftdrift import smk
from ftdrift.report.drift import write_drift
from ftdrift.report.frames import configure_methods

smk.start(snakemake)
configure_methods(snakemake.params.methods)  # method order, labels and colours
write_drift(
    drift=snakemake.input.drift,
    run_drift=snakemake.input.run_drift,
    runs=snakemake.input.runs,
    best=snakemake.input.best,
    seed_floor=snakemake.input.seed_floor,
    drift_by_layer=snakemake.input.drift_by_layer,
    task=snakemake.wildcards.task,
    outputs=dict(snakemake.output.items()),
)
