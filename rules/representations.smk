rule base_representations:
    input:
        probe="results/data/{task}/probe.jsonl",
    output:
        store=directory("results/representations/base/{task}.zarr"),
    log:
        "results/logs/base_representations/{task}.log",
    conda:
        "../envs/ftdrift.yaml"
    threads: 2
    resources:
        mem_mb=lambda wc: ftresources.light_gpu_job(CONFIG)["mem_mb"],
        runtime=60,
        gpu=lambda wc: ftresources.light_gpu_job(CONFIG)["gpu"],
    params:
        model=CONFIG["model"],
        task_def=task_def,
        data=lambda wc: settings(wc, "data"),
        representations=lambda wc: settings(wc, "representations"),
        # the runs' training precision: snapshots are taken in it, so the base must be too
        precision=lambda wc: settings(wc, "training")["precision"],
        code_version=CODE_VERSIONS["base_representations"],
    script:
        "../workflow/scripts/base_representations.py"
