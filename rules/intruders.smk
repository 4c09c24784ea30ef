# Do intruder dimensions matter? For each adapter method's chosen setting per task (its lowest
# usable seed, as the deployment job chooses), the intruder singular directions of every adapted
# matrix are scaled by each λ of intruders.lambdas and the validation metric (on the first
# intruders.max_examples validation examples) and forgetting (LM loss with the base head for
# families with an LM head, else out-of-task probe transfer) are measured. Logic:
# ftdrift.analysis.intruders.
rule intruder_intervention:
    input:
        models=run_paths("results/runs/{run}/model"),
        metrics=run_paths("results/runs/{run}/metrics.json"),
        validation=expand("results/data/{task}/validation.jsonl", task=CONFIG["tasks"]),
        probes=expand("results/data/{task}/probe.jsonl", task=CONFIG["tasks"]),
        bases=expand("results/representations/base/{task}.zarr", task=CONFIG["tasks"]),
        probe_models=[
            f"results/baselines/{t}.probe.npz"
            for t in CONFIG["tasks"]
            if ftconfig.task_kind(CONFIG["task_defs"][t]) == "classification"
        ],
        text_file=(CONFIG["forgetting"]["text_file"] or []) if LM_FAMILY else [],
    output:
        table="results/tables/intruder_intervention.csv",
    log:
        "results/logs/intruder_intervention.log",
    conda:
        "../envs/ftdrift.yaml"
    threads: CONFIG["resources"]["analysis_threads"]
    resources:
        mem_mb=lambda wc: ftresources.light_gpu_job(CONFIG)["mem_mb"],
        runtime=120,
        gpu=lambda wc: ftresources.light_gpu_job(CONFIG)["gpu"],
    params:
        tasks=CONFIG["tasks"],
        runs=[run.wildcards for run in ANALYSED_RUNS],  # in the order of input.models and input.metrics
        # the adapter methods only: the reference's or full fine-tuning's spec changes nothing here
        methods=ftmethods.adapter_specs(CONFIG),
        model=CONFIG["model"],
        task_defs={task: CONFIG["task_defs"][task] for task in CONFIG["tasks"]},
        settings={
            task: {s: ftconfig.task_settings(CONFIG, task)[s] for s in ("data", "representations")}
            for task in CONFIG["tasks"]
        },
        intruders=CONFIG["intruders"],
        weights={k: CONFIG["weights"][k] for k in ("intruder_top_k", "intruder_epsilon")},
        forgetting=CONFIG["forgetting"] if LM_FAMILY else None,
        code_version=CODE_VERSIONS["intruder_intervention"],
    script:
        "../workflow/scripts/intruder_intervention.py"
