rule aggregate:
    input:
        metrics=run_paths("results/runs/{run}/metrics.json"),
        drift=run_paths("results/drift/{run}.csv"),
    output:
        runs=report("results/tables/runs.csv", category="Performance", labels={"table": "all runs"},
                    caption="../report/runs.rst"),
        drift="results/tables/drift.csv",
        best="results/tables/best.csv",
        verdicts="results/tables/verdicts.csv",
        drift_by_layer="results/tables/drift_by_layer.csv",
        summary="results/tables/summary.md",
        latex="results/tables/tables.tex",
    params:
        tasks=CONFIG["tasks"],
        task_defs=CONFIG["task_defs"],
        analysis=CONFIG["analysis"],
        code_version=CODE_VERSIONS["aggregate"],
    log:
        "results/logs/aggregate.log",
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../envs/ftdrift.yaml"
    script:
        "../workflow/scripts/aggregate.py"
