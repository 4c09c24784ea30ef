rule prepare_data:
    input:
        task_files,
    output:
        **{split: f"results/data/{{task}}/{split}.jsonl" for split in ("train", "dev", "validation", "probe")},
        splits="results/data/{task}/splits.json",
    log:
        "results/logs/prepare_data/{task}.log",
    conda:
        "../envs/ftdrift.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        task_def=task_def,
        data=lambda wc: settings(wc, "data"),
        code_version=CODE_VERSIONS["prepare_data"],
    script:
        "../workflow/scripts/prepare_data.py"
