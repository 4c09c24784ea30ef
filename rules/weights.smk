# Weight-space analysis of one run, for any method: spectra of the update ΔW = W_merged −
# W_pretrained of every matrix the method changed (full: every block linear; an adapter: the
# modules it adapts, merged in float64), the rank holding weights.delta_energy of ||ΔW||_F^2,
# intruder dimensions at the headline (top-k, ε) and over the sweep weights.intruder_ks x
# weights.intruder_epsilons, and parameter counts. SVDs in float64 on the CPU.
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
        # the base model's block weights plus the fine-tuned model (an adapter: merged in float64)
        mem_mb=lambda wc: ftresources.light_gpu_job(CONFIG)["mem_mb"],
        runtime=120,
    params:
        run=run_params,
        model=CONFIG["model"],
        task_def=task_def,
        method=method_params,
        weights=CONFIG["weights"],
        code_version=CODE_VERSIONS["weight_analysis"],
    script:
        "../workflow/scripts/weight_analysis.py"
