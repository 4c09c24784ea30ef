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
    output:
        runs=report(
            "results/tables/runs.csv",
            category="Performance",
            subcategory="Tables",
            labels={"table": "all runs"},
            caption="../report/runs.rst",
        ),
        drift="results/tables/drift.csv",
        best="results/tables/best.csv",
        verdicts="results/tables/verdicts.csv",
        drift_by_layer="results/tables/drift_by_layer.csv",
        summary="results/tables/summary.md",
        latex="results/tables/tables.tex",
        weights="results/tables/weights.csv",
        stability="results/tables/stability.csv",
        baselines="results/tables/baselines.csv",
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
        analysis=CONFIG["analysis"],
        planned=PLANNED_RUNS,
        code_version=CODE_VERSIONS["aggregate"],
    script:
        "../workflow/scripts/aggregate.py"
