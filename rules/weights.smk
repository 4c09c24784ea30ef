# Weight-space analysis of one run: spectra of the update ΔW of every LoRA-targeted matrix
# (both methods), intruder dimensions, parameter counts, and for LoRA the merge check.
rule weight_analysis:
    input:
        model=f"results/runs/{RUN_PATTERN}/model",
        probe="results/data/{task}/probe.jsonl",
    output:
        table=f"results/weights/{RUN_PATTERN}.csv",
        summary=f"results/weights/{RUN_PATTERN}.json",
    params:
        run=run_params,
        model=CONFIG["model"],
        task_def=task_def,
        lora=lora_params,
        # full fine-tuning is analysed on the matrices LoRA adapts (null: the family's default)
        target_modules=CONFIG["lora"]["target_modules"],
        data=lambda wc: settings(wc, "data"),
        representations=lambda wc: settings(wc, "representations"),
        analysis={k: CONFIG["analysis"][k] for k in ("intruder_top_k", "intruder_epsilon")},
        code_version=CODE_VERSIONS["weight_analysis"],
    log:
        f"results/logs/weight_analysis/{RUN_PATTERN}.log",
    threads: CONFIG["resources"]["analysis_threads"]
    resources:
        # full: the fine-tuned model plus the base's adapted matrices; LoRA: the base model plus
        # the adapter, then its merge; float32 throughout
        mem_mb=lambda wc: ftresources.light_gpu_job(CONFIG)["mem_mb"],
        runtime=120,
        # only the LoRA merge check runs the model (SVDs are on the CPU)
        gpu=lambda wc: ftresources.light_gpu_job(CONFIG)["gpu"] if wc.method == "lora" else 0,
    conda:
        "../envs/ftdrift.yaml"
    script:
        "../workflow/scripts/weight_analysis.py"
