# Similarity between two fine-tuning runs (ftdrift.analysis.pairs): the seed floor (runs of one
# setting that differ only in their seed) and each method vs the reference method
# (analysis.reference_method; the chosen settings of a task, same seed). Both read the runs' snapshot stores; the metrics are drift.metrics.
rule seed_floor:
    input:
        unpack(seed_floor_inputs),
    output:
        table=ftpairs.SEED_FLOOR,
    log:
        f"results/logs/seed_floor/{{task}}/{{method}}/{ftgrid.SETTING_NAME}.log",
    conda:
        "../envs/ftdrift.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        setting=lambda wc: {"task": wc.task, "method": wc.method, "lr": wc.lr, "batch_size": int(wc.batch_size)},
        seeds=seed_floor_seeds,
        metrics=CONFIG["drift"]["metrics"],
        bootstrap_resamples=CONFIG["drift"]["bootstrap_resamples"],
        code_version=CODE_VERSIONS["seed_floor"],
    script:
        "../workflow/scripts/seed_floor.py"


rule method_similarity:
    input:
        # the chosen settings' usable runs: rewritten only when a run's metrics change, not with every table
        chosen="results/tables/chosen.csv",
        stores=lambda wc: [f"results/runs/{run.path}/representations.zarr" for run in method_pair_runs(wc)],
        metrics=lambda wc: [f"results/runs/{run.path}/metrics.json" for run in method_pair_runs(wc)],
    output:
        pairs=ftpairs.METHOD_PAIR,
        layers=ftpairs.METHOD_PAIR_LAYERS,
    log:
        "results/logs/method_similarity/{task}/{method}.log",
    conda:
        "../envs/ftdrift.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        runs=lambda wc: [run.wildcards for run in method_pair_runs(wc)],
        reference=REFERENCE_METHOD,
        metrics=CONFIG["drift"]["metrics"],
        bootstrap_resamples=CONFIG["drift"]["bootstrap_resamples"],
        code_version=CODE_VERSIONS["method_similarity"],
    script:
        "../workflow/scripts/method_similarity.py"
