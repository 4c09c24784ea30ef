"""The HTML report's figures and pages (snakemake --report), one module per job.

    intro         the study question and hypotheses in words; the report's front page
    overview      the Overview page: headline, H1/H2 verdicts, setup, runs, summary.md
    performance   validation metric, hyperparameter grid, QA breakdown
    drift         drift heatmaps, by layer, over training, metric vs drift
    weights       weight-space diagnostics of ΔW (spectra, intruder sweep, energy rank)
    similarity    each method vs the reference: CKA per layer over training, layer x layer heatmap
    methods       the methods ranked by closeness to the reference, the Pareto view
    forgetting    out-of-task drift, frozen-probe transfer, LM perplexity vs in-task gain
    training      per-run diagnostics and all runs' training curves
    labels        the report entries' labels (computed at report time)
    frames        reading the workflow's tables: canonical keys, run statuses, chosen settings
    style         the figures' colours, matplotlib defaults, markers, legends, saving
    html          HTML pages, tables and badges; Markdown via markdown-it-py

Each rule of rules/report.smk calls one `write_*` function (overview.write_overview, ...)
through its script in workflow/scripts/report_*.py; only the figure modules import matplotlib.
"""
