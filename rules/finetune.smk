# One job per (task, method, lr, batch size, seed). Checkpoints live in results/work/,
# outside the declared outputs, so a killed or preempted job resumes when re-run.
# No Snakemake retries: an out-of-memory error is retried inside the job with half the
# micro-batch (ftdrift.training.recipe.finetune); any other failure stops at once.
rule finetune:
    input:
        unpack(run_data),
    output:
        metrics=f"results/runs/{RUN_PATTERN}/metrics.json",
        train_log=f"results/runs/{RUN_PATTERN}/train_log.csv",
        predictions=f"results/runs/{RUN_PATTERN}/predictions.json",
        representations=directory(f"results/runs/{RUN_PATTERN}/representations.zarr"),
        model=directory(f"results/runs/{RUN_PATTERN}/model"),
    log:
        f"results/logs/finetune/{RUN_PATTERN}.log",
    retries: 0
    conda:
        "../envs/ftdrift.yaml"
    threads: CONFIG["resources"]["finetune_threads"]
    resources:
        mem_mb=lambda wc: finetune_resources(wc)["mem_mb"],
        runtime=lambda wc: finetune_resources(wc)["runtime"],
        gpu=lambda wc: finetune_resources(wc)["gpu"],
        gpu_model=lambda wc: finetune_resources(wc)["gpu_model"],
        cpus_per_gpu=lambda wc: finetune_resources(wc)["cpus_per_gpu"],
    params:
        run=run_params,
        task_def=task_def,
        settings=lambda wc: {s: settings(wc, s) for s in ("data", "training", "representations")},
        model=CONFIG["model"],
        method=method_params,
        work_dir=lambda wc: f"results/work/{RUN_PATTERN.format(**wc)}",
        code_version=CODE_VERSIONS["finetune"],
    script:
        "../workflow/scripts/finetune.py"
