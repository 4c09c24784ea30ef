# Forgetting of one run: its fine-tuned model on every OTHER task's probe set (out-of-task drift
# against the base store, the base model's frozen linear probe applied after fine-tuning) and, for
# families with a language-modelling head, the base head's loss on generic text (forgetting.text_file).


rule forgetting:
    input:
        model=f"results/runs/{RUN_PATTERN}/model",
        metrics=f"results/runs/{RUN_PATTERN}/metrics.json",  # the run's training precision
        probes=lambda wc: expand("results/data/{other}/probe.jsonl", other=other_tasks(wc)),
        bases=lambda wc: expand("results/representations/base/{other}.zarr", other=other_tasks(wc)),
        probe_models=lambda wc: expand("results/baselines/{other}.probe.npz", other=other_tasks(wc, "classification")),
        # an input when set (and read: families with an LM head), so that editing the text re-runs the jobs
        text_file=(CONFIG["forgetting"]["text_file"] or []) if LM_FAMILY else [],
    output:
        forgetting=f"results/forgetting/{RUN_PATTERN}.json",
    log:
        f"results/logs/forgetting/{RUN_PATTERN}.log",
    conda:
        "../envs/ftdrift.yaml"
    threads: CONFIG["resources"]["analysis_threads"]
    resources:
        mem_mb=lambda wc: ftresources.light_gpu_job(CONFIG)["mem_mb"],
        runtime=60,
        gpu=lambda wc: ftresources.light_gpu_job(CONFIG)["gpu"],
    params:
        run=run_params,
        model=CONFIG["model"],
        method=method_params,
        task_def=task_def,
        # per other task, in the order of the input lists: what its base store was extracted with
        others=lambda wc: {
            t: {
                "task_def": CONFIG["task_defs"][t],
                "data": ftconfig.task_settings(CONFIG, t)["data"],
                "representations": ftconfig.task_settings(CONFIG, t)["representations"],
            }
            for t in other_tasks(wc)
        },
        drift={k: CONFIG["drift"][k] for k in ("metrics", "bootstrap_resamples")},
        # the LM step's settings reach only families with an LM head: elsewhere they change nothing
        forgetting=CONFIG["forgetting"] if LM_FAMILY else None,
        code_version=CODE_VERSIONS["forgetting"],
    script:
        "../workflow/scripts/forgetting.py"
