from ftdrift import smk

smk.start(snakemake)  # before transformers is imported, so its log handler writes to the rule's log

from ftdrift.analysis.intruders import intruder_intervention  # noqa: E402
from ftdrift.study.config import task_kind  # noqa: E402

params = snakemake.params
tasks = params.tasks
# probe transfer candidates: the classification tasks, in the order of input.probe_models
others = {}
models = iter(snakemake.input.probe_models)
for task, probe, base in zip(tasks, snakemake.input.probes, snakemake.input.bases, strict=True):
    if task_kind(params.task_defs[task]) == "classification":
        others[task] = {"task_def": params.task_defs[task], **params.settings[task], "probe": probe, "base": base,
                        "probe_model": next(models)}
intruder_intervention(
    runs=params.runs,
    model_dirs=snakemake.input.models,
    metrics_paths=snakemake.input.metrics,
    methods=params.methods,
    model_cfg=params.model,
    task_defs=params.task_defs,
    settings=params.settings,
    validation_paths=dict(zip(tasks, snakemake.input.validation, strict=True)),
    others=others,
    intruders_cfg=params.intruders,
    weights_cfg=params.weights,
    forgetting_cfg=params.forgetting,
    text_file=snakemake.input.get("text_file") or None,
    out_path=snakemake.output.table,
)
