rule drift:
    input:
        base="results/representations/base/{task}.zarr",
        run=f"results/runs/{RUN_PATTERN}/representations.zarr",
        # its meta.snapshot_steps: the store must hold exactly these
        metrics=f"results/runs/{RUN_PATTERN}/metrics.json",
    output:
        table=f"results/drift/{RUN_PATTERN}.csv",
        # the final linear CKA's replicates over probe resamples (the tables' probe intervals)
        bootstrap=f"results/drift/{RUN_PATTERN}.bootstrap.csv",
    log:
        f"results/logs/drift/{RUN_PATTERN}.log",
    conda:
        "../envs/ftdrift.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        run=run_params,
        metrics=CONFIG["drift"]["metrics"],
        bootstrap_resamples=CONFIG["drift"]["bootstrap_resamples"],
        code_version=CODE_VERSIONS["drift"],
    script:
        "../workflow/scripts/drift.py"
