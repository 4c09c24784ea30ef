from ftdrift import smk
from ftdrift.core import io

smk.start(snakemake)  # before transformers is imported, so its log handler writes to the rule's log

from ftdrift.analysis.tuned import method_of  # noqa: E402
from ftdrift.analysis.weights import analyse_run  # noqa: E402

weights = snakemake.params.weights
rows, summary, sweep = analyse_run(
    model_dir=snakemake.input.model,
    model_cfg=snakemake.params.model,
    task_def=snakemake.params.task_def,
    method=method_of(snakemake.wildcards.method, snakemake.params.method),
    run=snakemake.params.run,
    top_k=weights["intruder_top_k"],
    epsilon=weights["intruder_epsilon"],
    intruder_ks=weights["intruder_ks"],
    intruder_epsilons=weights["intruder_epsilons"],
    delta_energy=weights["delta_energy"],
)
io.write_csv(snakemake.output.table, rows)
io.write_csv(snakemake.output.intruders, sweep)
io.write_json(snakemake.output.summary, summary)
