# Checkpoint validation of one run: its saved model/, reloaded in a fresh process (full model;
# base + adapter; merged adapter; any method), must reproduce predictions.json and metrics.json.
# It reads the run's outputs from storage, which proves them stored, and so also releases the
# fine-tuning job's checkpoint mirror (kept until then: ftdrift.training.workdir).
rule validate_checkpoint:
    input:
        model=f"results/runs/{RUN_PATTERN}/model",
        metrics=f"results/runs/{RUN_PATTERN}/metrics.json",
        predictions=f"results/runs/{RUN_PATTERN}/predictions.json",
        validation="results/data/{task}/validation.jsonl",
    output:
        check=f"results/checks/{RUN_PATTERN}.json",
    log:
        f"results/logs/validate_checkpoint/{RUN_PATTERN}.log",
    conda:
        "../envs/ftdrift.yaml"
    threads: CONFIG["resources"]["analysis_threads"]
    resources:
        mem_mb=lambda wc: ftresources.light_gpu_job(CONFIG)["mem_mb"],
        runtime=60,
        gpu=lambda wc: ftresources.light_gpu_job(CONFIG)["gpu"],
    params:
        model=CONFIG["model"],
        method=method_params,
        task_def=task_def,
        data=lambda wc: settings(wc, "data"),
        code_version=CODE_VERSIONS["validate_checkpoint"],
    script:
        "../workflow/scripts/validate_checkpoint.py"
