from ftdrift import smk

smk.start(snakemake)  # before the library loads numpy and torch: thread settings apply to them
from ftdrift.analysis.forgetting import run_forgetting  # noqa: E402
from ftdrift.analysis.tuned import method_of  # noqa: E402
from ftdrift.study.config import task_kind  # noqa: E402

# the input lists follow params.others' order; probe_models holds its classification tasks only
others = snakemake.params.others
models = iter(snakemake.input.probe_models)
for (task, spec), probe, base in zip(others.items(), snakemake.input.probes, snakemake.input.bases, strict=True):
    spec.update(probe=probe, base=base,
                probe_model=next(models) if task_kind(spec["task_def"]) == "classification" else None)
run_forgetting(
    run=snakemake.params.run,
    method=method_of(snakemake.wildcards.method, snakemake.params.method),
    model_dir=snakemake.input.model,
    metrics_path=snakemake.input.metrics,
    model_cfg=snakemake.params.model,
    task_def=snakemake.params.task_def,
    others=others,
    drift_cfg=snakemake.params.drift,
    forgetting_cfg=snakemake.params.forgetting,
    text_file=snakemake.input.get("text_file") or None,
    out_path=snakemake.output.forgetting,
)
