# One job per (task, method, lr, batch size, seed). Checkpoints live in results/work/,
# outside the declared outputs, so a killed or preempted job resumes when re-run.
rule finetune:
    input:
        train="results/data/{task}/train.jsonl",
        dev="results/data/{task}/dev.jsonl",
        validation="results/data/{task}/validation.jsonl",
        probe="results/data/{task}/probe.jsonl",
    output:
        metrics=f"results/runs/{RUN_PATTERN}/metrics.json",
        train_log=f"results/runs/{RUN_PATTERN}/train_log.csv",
        predictions=f"results/runs/{RUN_PATTERN}/predictions.json",
        representations=directory(f"results/runs/{RUN_PATTERN}/representations.zarr"),
        model=directory(f"results/runs/{RUN_PATTERN}/model"),
    params:
        run=run_params,
        task_def=task_def,
        settings=lambda wc: {s: settings(wc, s) for s in ("data", "training", "representations")},
        model=CONFIG["model"],
        lora=lora_params,
        analysis={k: CONFIG["analysis"][k] for k in ("bootstrap_resamples", "confidence")},
        work_dir=lambda wc: f"results/work/{RUN_PATTERN.format(**wc)}",
        code_version=CODE_VERSIONS["finetune"],
    log:
        f"results/logs/finetune/{RUN_PATTERN}.log",
    threads: CONFIG["resources"]["finetune_threads"]
    retries: 2
    resources:
        mem_mb=lambda wc, attempt: finetune_resources(wc, attempt)["mem_mb"],
        runtime=lambda wc, attempt: finetune_resources(wc, attempt)["runtime"],
        gpu=lambda wc, attempt: finetune_resources(wc, attempt)["gpu"],
        gpu_model=lambda wc, attempt: finetune_resources(wc, attempt)["gpu_model"],
        cpus_per_gpu=lambda wc, attempt: finetune_resources(wc, attempt)["cpus_per_gpu"],
        micro_batch=lambda wc, attempt: finetune_resources(wc, attempt)["micro_batch"],
        attempt=lambda wc, attempt: attempt,  # the script derives its OOM-retry plan from it
    conda:
        "../envs/ftdrift.yaml"
    script:
        "../workflow/scripts/finetune.py"
