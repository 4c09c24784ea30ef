# Weight-space analysis of one run: spectra of the update ΔW of every LoRA-targeted matrix
# (both methods), the rank holding weights.delta_energy of ||ΔW||_F^2, intruder dimensions at the
# headline (top-k, ε) and over the sweep weights.intruder_ks x weights.intruder_epsilons, and
# parameter counts. SVDs in float64 on the CPU.
rule weight_analysis:
    input:
        model=f"results/runs/{RUN_PATTERN}/model",
    output:
        table=f"results/weights/{RUN_PATTERN}.csv",
        summary=f"results/weights/{RUN_PATTERN}.json",
        # one row per matrix x k x ε (columns: RUN_KEYS, module, layer, matrix, k, epsilon, intruders)
        intruders=f"results/weights/{RUN_PATTERN}.intruders.csv",
    log:
        f"results/logs/weight_analysis/{RUN_PATTERN}.log",
    conda:
        "../envs/ftdrift.yaml"
    threads: CONFIG["resources"]["analysis_threads"]
    resources:
        # full: the fine-tuned model plus the base's adapted matrices; LoRA: the base model plus
        # the adapter; float32 throughout
        mem_mb=lambda wc: ftresources.light_gpu_job(CONFIG)["mem_mb"],
        runtime=120,
    params:
        run=run_params,
        model=CONFIG["model"],
        task_def=task_def,
        lora=lora_params,
        # full fine-tuning is analysed on the matrices LoRA adapts (null: the family's default)
        target_modules=CONFIG["lora"]["target_modules"],
        weights=CONFIG["weights"],
        code_version=CODE_VERSIONS["weight_analysis"],
    script:
        "../workflow/scripts/weight_analysis.py"
