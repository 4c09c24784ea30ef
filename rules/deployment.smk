# Deployment benchmark: what serving every task costs as N fully fine-tuned models (the full
# method's) against one base model with N adapters (deployment.method; null: the first adapter method) (latency, throughput, adapter switching and mixed batches,
# resident memory), for each task's chosen setting. The job chooses it from the runs' dev metrics
# as aggregate does (so new statistics do not re-run it); which run is served depends on those
# metrics, so every run's model is an input. Logic: ftdrift.analysis.deployment.


rule deployment:
    input:
        models=run_paths("results/runs/{run}/model"),
        metrics=run_paths("results/runs/{run}/metrics.json"),
        probes=expand("results/data/{task}/probe.jsonl", task=CONFIG["tasks"]),
    output:
        table="results/tables/deployment.csv",
        memory="results/tables/deployment_memory.csv",
        summary="results/tables/deployment.json",
    log:
        "results/logs/deployment.log",
    conda:
        "../envs/ftdrift.yaml"
    threads: CONFIG["resources"]["analysis_threads"]
    resources:
        mem_mb=ftresources.deployment_job(CONFIG)["mem_mb"],
        runtime=60,
        gpu=ftresources.deployment_job(CONFIG)["gpu"],
    params:
        tasks=CONFIG["tasks"],
        runs=[run.wildcards for run in ANALYSED_RUNS],  # in the order of input.models and input.metrics
        model=CONFIG["model"],
        task_defs={task: CONFIG["task_defs"][task] for task in CONFIG["tasks"]},
        data={task: ftconfig.task_settings(CONFIG, task)["data"] for task in CONFIG["tasks"]},
        deployment=CONFIG["deployment"],
        # the served methods are chosen among these (ftdrift.analysis.deployment.served_methods)
        methods=CONFIG["methods"],
        reference=CONFIG["analysis"]["reference_method"],
        # forward passes run in the runs' training precision ('auto' resolves on the job's machine)
        precision={task: ftconfig.task_settings(CONFIG, task)["training"]["precision"] for task in CONFIG["tasks"]},
        code_version=CODE_VERSIONS["deployment"],
    script:
        "../workflow/scripts/deployment.py"
