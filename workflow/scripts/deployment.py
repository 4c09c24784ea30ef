from ftdrift import smk

smk.start(snakemake)  # before transformers is imported, so its log handler writes to the rule's log

from ftdrift.analysis.deployment import deployment  # noqa: E402

deployment(
    runs=snakemake.params.runs,
    model_dirs=snakemake.input.models,
    metrics_paths=snakemake.input.metrics,
    probe_paths=dict(zip(snakemake.params.tasks, snakemake.input.probes, strict=True)),
    model_cfg=snakemake.params.model,
    task_defs=snakemake.params.task_defs,
    data_settings=snakemake.params.data,
    settings=snakemake.params.deployment,
    precision=snakemake.params.precision,
    methods=snakemake.params.methods,
    reference=snakemake.params.reference,
    outputs=dict(snakemake.output.items()),
)
