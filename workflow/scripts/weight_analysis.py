from ftdrift import smk
from ftdrift.core import io

smk.start(snakemake)  # before transformers is imported, so its log handler writes to the rule's log

from ftdrift.analysis.weights import analyse_run  # noqa: E402

rows, summary = analyse_run(
    model_dir=snakemake.input.model,
    model_cfg=snakemake.params.model,
    task_def=snakemake.params.task_def,
    method=snakemake.params.run["method"],
    lora_cfg=snakemake.params.lora,
    run=snakemake.params.run,
    top_k=snakemake.params.weights["intruder_top_k"],
    epsilon=snakemake.params.weights["intruder_epsilon"],
    target_modules=snakemake.params.target_modules,
)
io.write_csv(snakemake.output.table, rows)
io.write_json(snakemake.output.summary, summary)
