# The chosen setting of each task x method (best mean dev metric) and its usable runs, from the
# runs' metrics alone: what rule method_similarity compares.
rule choose_settings:
    input:
        metrics=run_paths("results/runs/{run}/metrics.json"),
    output:
        chosen="results/tables/chosen.csv",
    log:
        "results/logs/choose_settings.log",
    conda:
        "../envs/ftdrift.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code_version=CODE_VERSIONS["aggregate"],
    script:
        "../workflow/scripts/choose_settings.py"


# Every statistic over runs lives here, downstream of training: changing an `analysis.*` key
# re-runs this job and the report, never a fine-tuning, drift or weight-analysis job.
rule aggregate:
    input:
        metrics=run_paths("results/runs/{run}/metrics.json"),
        predictions=run_paths("results/runs/{run}/predictions.json"),
        train_logs=run_paths("results/runs/{run}/train_log.csv"),
        validation=expand("results/data/{task}/validation.jsonl", task=CONFIG["tasks"]),
        drift=run_paths("results/drift/{run}.csv"),
        weights=run_paths("results/weights/{run}.csv"),
        checks=run_paths("results/checks/{run}.json"),
        baselines=expand("results/baselines/{task}.json", task=CONFIG["tasks"]),
        bootstrap=run_paths("results/drift/{run}.bootstrap.csv"),
        seed_floor=SEED_FLOOR_PATHS,
        forgetting=run_paths("results/forgetting/{run}.json"),
        intruders=run_paths("results/weights/{run}.intruders.csv"),
    output:
        runs=report(
            "results/tables/runs.csv",
            category="Performance",
            subcategory="Tables",
            labels={"table": "all runs"},
            caption="../report/runs.rst",
        ),
        drift="results/tables/drift.csv",
        run_drift="results/tables/run_drift.csv",
        best="results/tables/best.csv",
        verdicts="results/tables/verdicts.csv",
        drift_by_layer="results/tables/drift_by_layer.csv",
        summary="results/tables/summary.md",
        latex="results/tables/tables.tex",
        weights="results/tables/weights.csv",
        stability="results/tables/stability.csv",
        baselines="results/tables/baselines.csv",
        seed_floor="results/tables/seed_floor.csv",
        forgetting="results/tables/forgetting.csv",
        out_of_task="results/tables/out_of_task.csv",
        probe_transfer="results/tables/probe_transfer.csv",
        intruders="results/tables/intruders.csv",
    log:
        "results/logs/aggregate.log",
    conda:
        "../envs/ftdrift.yaml"
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        tasks=CONFIG["tasks"],
        task_defs=CONFIG["task_defs"],
        analysis=ANALYSIS_PARAMS,
        planned=PLANNED_RUNS,
        # names only (the verdicts' order): a method's spec reaches its own jobs, not this one
        methods=list(CONFIG["methods"]),
        code_version=CODE_VERSIONS["aggregate"],
    script:
        "../workflow/scripts/aggregate.py"


# The method axis (ftdrift.analysis.method_comparison): each method's closeness to the reference
# method by layer, and per task x method its cost (trainable parameters), validation metric, drift
# and forgetting, with the closeness rank and the Pareto front.
rule compare_methods:
    input:
        best="results/tables/best.csv",
        runs="results/tables/runs.csv",
        forgetting="results/tables/forgetting.csv",
        pairs=[ftpairs.METHOD_PAIR.format(task=task, method=method) for task, method in COMPARED_PAIRS],
    output:
        methods="results/tables/methods.csv",
        closeness="results/tables/method_closeness.csv",
    log:
        "results/logs/compare_methods.log",
    conda:
        "../envs/ftdrift.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        methods=list(CONFIG["methods"]),
        reference=REFERENCE_METHOD,
        analysis={key: CONFIG["analysis"][key] for key in ("h2_metric", "h2_pooling")},
        code_version=CODE_VERSIONS["aggregate"],
    script:
        "../workflow/scripts/compare_methods.py"
