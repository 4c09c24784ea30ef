rule prepare_data:
    input:
        task_files,
    output:
        **{split: f"results/data/{{task}}/{split}.jsonl" for split in ("train", "dev", "validation", "probe")},
        splits="results/data/{task}/splits.json",
    params:
        task_def=task_def,
        data=lambda wc: settings(wc, "data"),
        code_version=CODE_VERSIONS["prepare_data"],
    log:
        "results/logs/prepare_data/{task}.log",
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/ftdrift.yaml"
    script:
        "../workflow/scripts/prepare_data.py"
