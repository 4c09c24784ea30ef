# Baselines of one task: the trivial answer (majority class / always no answer) and a linear
# probe of the frozen base model (pooled features; SQuAD v2: a token-level span probe), saved for reuse.
rule baselines:
    input:
        train="results/data/{task}/train.jsonl",
        dev="results/data/{task}/dev.jsonl",
        validation="results/data/{task}/validation.jsonl",
    output:
        baselines="results/baselines/{task}.json",
        # the fitted classification probe, for the forgetting rule (QA: an npz marked not_applicable)
        probe="results/baselines/{task}.probe.npz",
    log:
        "results/logs/baselines/{task}.log",
    conda:
        "../envs/ftdrift.yaml"
    threads: CONFIG["resources"]["analysis_threads"]
    resources:
        mem_mb=lambda wc: ftresources.light_gpu_job(CONFIG)["mem_mb"],
        runtime=60,
        gpu=lambda wc: ftresources.light_gpu_job(CONFIG)["gpu"],
    params:
        model=CONFIG["model"],
        task_def=task_def,
        data=lambda wc: settings(wc, "data"),
        batch_size=lambda wc: settings(wc, "representations")["batch_size"],  # of the forward passes
        # the section less probe_pooling, which enters resolved: what changes the probe's features re-runs it
        baselines={k: v for k, v in CONFIG["baselines"].items() if k != "probe_pooling"},
        # null = analysis.h2_pooling; none for the span probe, which reads tokens, not pooled features
        probe_pooling=lambda wc: ftconfig.probe_pooling(CONFIG, wc.task),
        # the runs' training precision, as base_representations: the probe reads the base model the runs start from
        precision=lambda wc: settings(wc, "training")["precision"],
        code_version=CODE_VERSIONS["baselines"],
    script:
        "../workflow/scripts/baselines.py"
