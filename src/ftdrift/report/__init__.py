"""The HTML report's figures and pages (snakemake --report), one module per job.

    overview      the Overview page: headline, H1/H2 verdicts, setup, runs, summary.md
    performance   validation metric, hyperparameter grid, QA breakdown
    drift         drift heatmaps, by layer, over training, metric vs drift
    weights       weight-space diagnostics of ΔW (spectra, intruder sweep, energy rank)
    similarity    full vs LoRA: CKA per layer over training, layer x layer heatmap
    forgetting    out-of-task drift, frozen-probe transfer, LM perplexity vs in-task gain
    training      per-run diagnostics and all runs' training curves
    labels        the report entries' labels (computed at report time)
    frames        reading the workflow's tables: canonical keys, run statuses, chosen settings
    style         the figures' colours, matplotlib defaults, markers, legends, saving
    html          HTML pages, tables and badges; Markdown via markdown-it-py

Each rule of rules/report.smk calls one `write_*` function (overview.write_overview, ...)
through its script in workflow/scripts/report_*.py; only the figure modules import matplotlib.
"""
