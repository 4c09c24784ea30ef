# On remote storage (profiles/gcp-gpu: a bucket is the default storage), the task files in
# data_dir are on this machine only: this local rule copies each one into the bucket
# (results/staged/<path below data_dir>), and prepare_data, which may run on a VM, reads that copy.
# Without remote storage nothing asks for results/staged/ and prepare_data reads data_dir itself.
localrules:
    stage_data,


rule stage_data:
    input:
        stage_source,
    output:
        f"{ftstorage.STAGED_DIR}/{{path}}",
    log:
        f"results/logs/stage_data/{{path}}.log",
    conda:
        "../envs/ftdrift.yaml"
    script:
        "../workflow/scripts/stage_data.py"


rule prepare_data:
    input:
        task_files,
    output:
        **{split: f"results/data/{{task}}/{split}.jsonl" for split in ftdata.SPLITS},
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
