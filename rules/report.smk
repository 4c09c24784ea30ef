# The report: `snakemake --report report.html` after a run (also `report.zip`).
# Rules here only read the aggregate tables and the runs' training logs and write SVG / HTML /
# CSV files flagged with report(); each rule's script calls one function of src/ftdrift/report/
# (report_overview -> ftdrift.report.overview.write_overview, ...).
#
# Categories (left menu): Overview, Performance, Drift, Methods, Forgetting, Weight space, Training,
# Deployment. Every entry has
# labels (the columns a reader picks from: task, method, seed, metric, pooling, ...) and a
# caption in report/*.rst.
#
# ftdrift.report.labels (pandas) is imported only when a label is computed at report time,
# never while the workflow is parsed: every job parses this file.
import importlib

# the front page: the study question, hypotheses and methods, written from the config (ftdrift.report.intro)
FRONT_PAGE = importlib.import_module("ftdrift.report.intro").write_workflow_rst(
    CONFIG, str(Path(".snakemake/ftdrift/workflow.rst").resolve())
)


report: FRONT_PAGE


REPORT_DIR = "results/report"
TABLES = "results/tables"
QA_TASKS = [t for t in CONFIG["tasks"] if CONFIG["task_defs"][t]["type"] == "extractive_qa"]
# what every report job needs of the methods (order, labels, colours: ftdrift.report.frames.configure_methods)
METHODS_SLICE = {"methods": CONFIG["methods"], "analysis": {"reference_method": REFERENCE_METHOD}}


rule report_overview:
    input:
        runs=f"{TABLES}/runs.csv",
        best=f"{TABLES}/best.csv",
        verdicts=f"{TABLES}/verdicts.csv",
        summary=f"{TABLES}/summary.md",
        stability=f"{TABLES}/stability.csv",
    output:
        page=report(
            f"{REPORT_DIR}/overview/overview.html",
            category="Overview",
            subcategory="Study",
            labels=lambda wildcards, output: importlib.import_module("ftdrift.report.labels").read_headline(
                output.headline
            ),
            caption="../report/overview.rst",
        ),
        headline=f"{REPORT_DIR}/overview/headline.json",
    log:
        "results/logs/report/overview.log",
    conda:
        "../envs/ftdrift.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        study={
            **{key: CONFIG[key] for key in ("model", "tasks", "task_defs", "grid", "methods")},
            "analysis": ANALYSIS_PARAMS,
            "task_seeds": {task: ftgrid.task_seeds(CONFIG, task) for task in CONFIG["tasks"]},
        },
        planned=PLANNED_RUNS,
        methods=METHODS_SLICE,
        code_version=CODE_VERSIONS["report"],
    script:
        "../workflow/scripts/report_overview.py"


_QA_OUTPUTS = (
    {
        "qa": report(
            directory(f"{REPORT_DIR}/performance/qa"),
            patterns=["{task}.svg"],
            category="Performance",
            subcategory="SQuAD v2: answerable vs unanswerable",
            labels={"task": "{task}"},
            caption="../report/qa_breakdown.rst",
        ),
        "qa_csv": report(
            f"{REPORT_DIR}/performance/qa_breakdown.csv",
            category="Performance",
            subcategory="Tables",
            labels={"table": "QA scores by seed (CSV)"},
            caption="../report/tables_performance.rst",
        ),
    }
    if QA_TASKS
    else {}
)


rule report_performance:
    input:
        runs=f"{TABLES}/runs.csv",
        best=f"{TABLES}/best.csv",
        baselines=f"{TABLES}/baselines.csv",
    output:
        **_QA_OUTPUTS,
        validation=report(
            f"{REPORT_DIR}/performance/validation.svg",
            category="Performance",
            subcategory="Validation metric",
            labels={"figure": "chosen settings, all tasks"},
            caption="../report/validation.rst",
        ),
        table_html=report(
            f"{REPORT_DIR}/performance/chosen_settings.html",
            category="Performance",
            subcategory="Tables",
            labels={"table": "chosen settings (view)"},
            caption="../report/tables_performance.rst",
        ),
        table_csv=report(
            f"{REPORT_DIR}/performance/chosen_settings.csv",
            category="Performance",
            subcategory="Tables",
            labels={"table": "chosen settings (CSV)"},
            caption="../report/tables_performance.rst",
        ),
        grid_csv=report(
            f"{REPORT_DIR}/performance/grid.csv",
            category="Performance",
            subcategory="Tables",
            labels={"table": "hyperparameter grid (CSV)"},
            caption="../report/tables_performance.rst",
        ),
        grid=report(
            directory(f"{REPORT_DIR}/performance/grid"),
            patterns=["{task}.svg"],
            category="Performance",
            subcategory="Hyperparameter grid",
            labels={"task": "{task}"},
            caption="../report/grid.rst",
        ),
    log:
        "results/logs/report/performance.log",
    conda:
        "../envs/ftdrift.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        tasks=CONFIG["tasks"],
        qa_tasks=QA_TASKS,
        confidence=CONFIG["analysis"]["confidence"],
        drift_metric=CONFIG["analysis"]["h2_metric"],  # the drift of best.csv
        methods=METHODS_SLICE,
        code_version=CODE_VERSIONS["report"],
    script:
        "../workflow/scripts/report_performance.py"


_DRIFT_FIGURES = dict(
    patterns=["{metric}/{pooling}.svg"],
    category="Drift",
    labels={"task": "{task}", "metric": "{metric}", "pooling": "{pooling}"},
)


rule report_drift:
    input:
        drift=f"{TABLES}/drift.csv",
        run_drift=f"{TABLES}/run_drift.csv",
        runs=f"{TABLES}/runs.csv",
        best=f"{TABLES}/best.csv",
        seed_floor=f"{TABLES}/seed_floor.csv",
        drift_by_layer=f"{TABLES}/drift_by_layer.csv",
    output:
        heatmaps=report(
            directory(f"{REPORT_DIR}/drift/{{task}}/heatmaps"),
            subcategory="Layer × step heatmaps",
            caption="../report/drift_heatmaps.rst",
            **_DRIFT_FIGURES,
        ),
        by_layer=report(
            directory(f"{REPORT_DIR}/drift/{{task}}/by_layer"),
            subcategory="Final-step drift by layer",
            caption="../report/drift_by_layer.rst",
            **_DRIFT_FIGURES,
        ),
        over_training=report(
            directory(f"{REPORT_DIR}/drift/{{task}}/over_training"),
            subcategory="Drift over training",
            caption="../report/drift_over_training.rst",
            **_DRIFT_FIGURES,
        ),
        vs_metric=report(
            directory(f"{REPORT_DIR}/drift/{{task}}/vs_metric"),
            subcategory="Validation metric vs drift",
            caption="../report/metric_vs_drift.rst",
            **_DRIFT_FIGURES,
        ),
        table=report(
            f"{REPORT_DIR}/drift/{{task}}/final_drift_by_layer.csv",
            category="Drift",
            subcategory="Tables",
            labels={"task": "{task}", "table": "final-step drift by layer (CSV)"},
            caption="../report/drift_table.rst",
        ),
    log:
        "results/logs/report/drift/{task}.log",
    conda:
        "../envs/ftdrift.yaml"
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        methods=METHODS_SLICE,
        code_version=CODE_VERSIONS["report"],
    script:
        "../workflow/scripts/report_drift.py"


rule report_weights:
    input:
        weights=f"{TABLES}/weights.csv",
        best=f"{TABLES}/best.csv",
        intruders=f"{TABLES}/intruders.csv",
    output:
        effective_rank=report(
            directory(f"{REPORT_DIR}/weights/effective_rank"),
            patterns=["{task}.svg"],
            category="Weight space",
            subcategory="Effective rank and energy rank of ΔW",
            labels={"task": "{task}"},
            caption="../report/weights_rank.rst",
        ),
        intruders=report(
            directory(f"{REPORT_DIR}/weights/intruders"),
            patterns=["{task}.svg"],
            category="Weight space",
            subcategory="Intruder dimensions",
            labels={"task": "{task}"},
            caption="../report/weights_intruders.rst",
        ),
        intruder_sweep=report(
            directory(f"{REPORT_DIR}/weights/intruder_sweep"),
            patterns=["{task}.svg"],
            category="Weight space",
            subcategory="Intruder dimensions over ε and k",
            labels={"task": "{task}"},
            caption="../report/weights_intruder_sweep.rst",
        ),
        table=report(
            f"{REPORT_DIR}/weights/weights_by_layer.csv",
            category="Weight space",
            subcategory="Tables",
            labels={"table": "ΔW diagnostics by layer (CSV)"},
            caption="../report/weights_table.rst",
        ),
        sweep_table=report(
            f"{REPORT_DIR}/weights/intruder_sweep.csv",
            category="Weight space",
            subcategory="Tables",
            labels={"table": "intruder sweep over ε and k (CSV)"},
            caption="../report/weights_sweep_table.rst",
        ),
    log:
        "results/logs/report/weights.log",
    conda:
        "../envs/ftdrift.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        tasks=CONFIG["tasks"],
        # delta_energy names the energy rank; intruder_epsilon marks the headline ε in the sweep
        weights=CONFIG["weights"],
        methods=METHODS_SLICE,
        code_version=CODE_VERSIONS["report"],
    script:
        "../workflow/scripts/report_weights.py"


# Do intruder dimensions matter? Validation metric and forgetting as each adapter run's intruder
# directions are scaled by λ (rule intruder_intervention).
rule report_intruder_intervention:
    input:
        intervention=f"{TABLES}/intruder_intervention.csv",
    output:
        figure=report(
            f"{REPORT_DIR}/weights/intruder_intervention.svg",
            category="Weight space",
            subcategory="Intruder dimensions",
            labels={"figure": "intervention: accuracy and forgetting vs λ"},
            caption="../report/weights_intruder_intervention.rst",
        ),
        table=report(
            f"{REPORT_DIR}/weights/intruder_intervention.csv",
            category="Weight space",
            subcategory="Tables",
            labels={"table": "intruder intervention (CSV)"},
            caption="../report/weights_intruder_intervention.rst",
        ),
    log:
        "results/logs/report/intruder_intervention.log",
    conda:
        "../envs/ftdrift.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        methods=METHODS_SLICE,
        code_version=CODE_VERSIONS["report"],
    script:
        "../workflow/scripts/report_intruder_intervention.py"


rule report_training:
    input:
        runs=f"{TABLES}/runs.csv",
        logs=lambda wc: [f"results/runs/{run.path}/train_log.csv" for run in ANALYSED_RUNS if run.task == wc.task],
        stability=f"{TABLES}/stability.csv",
    output:
        runs=report(
            directory(f"{REPORT_DIR}/training/{{task}}/runs"),
            patterns=[f"{{method}}/{ftgrid.RUN_NAME}.svg"],
            category="Training",
            subcategory="Per-run diagnostics",
            caption="../report/training_run.rst",
            labels=lambda wildcards, input: importlib.import_module("ftdrift.report.labels").run_entry_labels(
                PLANNED_RUNS, input.runs, wildcards
            ),
        ),
        all_runs=report(
            f"{REPORT_DIR}/training/{{task}}/all_runs.svg",
            category="Training",
            subcategory="All runs of a task",
            labels={"task": "{task}"},
            caption="../report/training_all.rst",
        ),
        stability=report(
            f"{REPORT_DIR}/training/{{task}}/stability.html",
            category="Training",
            subcategory="Stability and convergence",
            labels={"task": "{task}"},
            caption="../report/training_stability.rst",
        ),
    log:
        "results/logs/report/training/{task}.log",
    conda:
        "../envs/ftdrift.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        planned=lambda wc: [run.wildcards for run in ANALYSED_RUNS if run.task == wc.task],
        main_metric=lambda wc: CONFIG["task_defs"][wc.task]["main_metric"],
        methods=METHODS_SLICE,
        code_version=CODE_VERSIONS["report"],
    script:
        "../workflow/scripts/report_training.py"


rule report_deployment:
    input:
        table=f"{TABLES}/deployment.csv",
        memory=f"{TABLES}/deployment_memory.csv",
        summary=f"{TABLES}/deployment.json",
    output:
        latency=report(
            f"{REPORT_DIR}/deployment/latency.svg",
            category="Deployment",
            subcategory="Latency by batch size",
            labels={"figure": "latency per task and variant"},
            caption="../report/deployment_latency.rst",
        ),
        multi_task=report(
            f"{REPORT_DIR}/deployment/multi_task.svg",
            category="Deployment",
            subcategory="Serving several tasks",
            labels={"figure": "mixed-task batches: N full models vs adapters"},
            caption="../report/deployment_multi_task.rst",
        ),
        tables=report(
            f"{REPORT_DIR}/deployment/tables.html",
            category="Deployment",
            subcategory="Tables",
            labels={"table": "latency, switching and memory (view)"},
            caption="../report/deployment_tables.rst",
        ),
    log:
        "results/logs/report/deployment.log",
    conda:
        "../envs/ftdrift.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        methods=METHODS_SLICE,
        code_version=CODE_VERSIONS["report"],
    script:
        "../workflow/scripts/report_deployment.py"


rule report_similarity:
    input:
        pairs=ftpairs.METHOD_PAIR,
        layers=ftpairs.METHOD_PAIR_LAYERS,
        best=f"{TABLES}/best.csv",
        runs=f"{TABLES}/runs.csv",
    output:
        over_training=report(
            f"{REPORT_DIR}/similarity/{{task}}/{{method}}/over_training.svg",
            category="Methods",
            subcategory="Same layer over training",
            labels={"task": "{task}", "method": "{method}"},
            caption="../report/similarity_over_training.rst",
        ),
        layers=report(
            f"{REPORT_DIR}/similarity/{{task}}/{{method}}/layers.svg",
            category="Methods",
            subcategory="Layer × layer (final models)",
            labels={"task": "{task}", "method": "{method}"},
            caption="../report/similarity_layers.rst",
        ),
        table=report(
            f"{REPORT_DIR}/similarity/{{task}}/{{method}}/final_by_layer.csv",
            category="Methods",
            subcategory="Similarity to the reference by layer",
            labels={"task": "{task}", "method": "{method}", "table": "final, by layer (CSV)"},
            caption="../report/similarity_table.rst",
        ),
    log:
        "results/logs/report/similarity/{task}/{method}.log",
    conda:
        "../envs/ftdrift.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        reference=REFERENCE_METHOD,
        methods=METHODS_SLICE,
        code_version=CODE_VERSIONS["report"],
    script:
        "../workflow/scripts/report_similarity.py"


rule report_forgetting:
    input:
        forgetting=f"{TABLES}/forgetting.csv",
        out_of_task=f"{TABLES}/out_of_task.csv",
        probe_transfer=f"{TABLES}/probe_transfer.csv",
        best=f"{TABLES}/best.csv",
    output:
        scatter=report(
            f"{REPORT_DIR}/forgetting/vs_gain.svg",
            category="Forgetting",
            subcategory="Forgetting vs in-task gain",
            labels={"figure": "every run"},
            caption="../report/forgetting_scatter.rst",
        ),
        by_layer=report(
            f"{REPORT_DIR}/forgetting/out_of_task_by_layer.svg",
            category="Forgetting",
            subcategory="Out-of-task drift by layer",
            labels={"figure": "chosen settings, every task"},
            caption="../report/forgetting_by_layer.rst",
        ),
        table_html=report(
            f"{REPORT_DIR}/forgetting/forgetting.html",
            category="Forgetting",
            subcategory="Tables",
            labels={"table": "forgetting per run (view)"},
            caption="../report/forgetting_table.rst",
        ),
        table_csv=report(
            f"{REPORT_DIR}/forgetting/forgetting.csv",
            category="Forgetting",
            subcategory="Tables",
            labels={"table": "forgetting per run (CSV)"},
            caption="../report/forgetting_table.rst",
        ),
    log:
        "results/logs/report/forgetting.log",
    conda:
        "../envs/ftdrift.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        metric=CONFIG["analysis"]["h2_metric"],
        pooling=CONFIG["analysis"]["h2_pooling"],
        methods=METHODS_SLICE,
        code_version=CODE_VERSIONS["report"],
    script:
        "../workflow/scripts/report_forgetting.py"


rule report_methods:
    input:
        methods=f"{TABLES}/methods.csv",
        closeness=f"{TABLES}/method_closeness.csv",
    output:
        ranking=report(
            f"{REPORT_DIR}/methods/ranking.svg",
            category="Methods",
            subcategory="Closeness to the reference",
            labels={"figure": "ranking vs trainable parameters"},
            caption="../report/methods_ranking.rst",
        ),
        pareto=report(
            f"{REPORT_DIR}/methods/pareto.svg",
            category="Methods",
            subcategory="Pareto view",
            labels={"figure": "validation metric vs cost, drift, forgetting"},
            caption="../report/methods_pareto.rst",
        ),
        table=report(
            f"{REPORT_DIR}/methods/methods.html",
            category="Methods",
            subcategory="Tables",
            labels={"table": "methods and closeness by layer (view)"},
            caption="../report/methods.rst",
        ),
    log:
        "results/logs/report/methods.log",
    conda:
        "../envs/ftdrift.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        methods=METHODS_SLICE,
        code_version=CODE_VERSIONS["report"],
    script:
        "../workflow/scripts/report_methods.py"


# Everything `rule all` must build for the report: one output of every report job.
REPORT_TARGETS = (
    [
        f"{REPORT_DIR}/overview/overview.html",
        f"{REPORT_DIR}/performance/validation.svg",
        f"{REPORT_DIR}/weights/weights_by_layer.csv",
        f"{REPORT_DIR}/deployment/tables.html",
        f"{REPORT_DIR}/forgetting/forgetting.html",
        f"{REPORT_DIR}/methods/methods.html",
        f"{REPORT_DIR}/weights/intruder_intervention.svg",
    ]
    + expand(f"{REPORT_DIR}/drift/{{task}}/final_drift_by_layer.csv", task=CONFIG["tasks"])
    + [f"{REPORT_DIR}/similarity/{task}/{method}/final_by_layer.csv" for task, method in COMPARED_PAIRS]
    + expand(f"{REPORT_DIR}/training/{{task}}/all_runs.svg", task=CONFIG["tasks"])
)
