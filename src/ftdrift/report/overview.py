"""The Overview page: study question, headline, H1/H2 verdicts, setup, runs, chosen settings, summary.md."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from ftdrift.core import io
from ftdrift.report import intro
from ftdrift.report.frames import (
    NOT_COMPLETED,
    adapter_methods,
    lr_text,
    method_label,
    method_name,
    method_order,
    read_table,
    reference_method,
    run_status,
)
from ftdrift.report.html import escape, fmt, html_page, html_table, markdown_html
from ftdrift.study.grid import RUN_KEYS, USABLE_STATUSES

HEADLINE_KEYS = ("page", "runs", "checks", "H1", "H2")  # the Overview entry's label columns, in this order


def write_overview(*, runs, best, verdicts, summary, study: Mapping, planned: Sequence[Mapping] | None,
                   outputs: Mapping, stability=None) -> None:
    """Rule report_overview: the page (outputs["page"]) and its headline labels (outputs["headline"])."""
    page, head = overview_page(read_table(runs), read_table(best), Path(summary).read_text(),
                               read_table(verdicts, required=False), study, planned,
                               read_table(stability, required=False))
    io.write_text(outputs["page"], page)
    io.write_json(outputs["headline"], head)


def checks_text(runs: pd.DataFrame | None) -> tuple[str, bool]:
    """('8 of 8 runs reproduce …', alarm?) from runs.csv's checkpoint-validation columns."""
    if runs is None or runs.empty or "checkpoint_ok" not in runs:
        return "not run", False
    runs = runs[runs.status != "missing"] if "status" in runs else runs  # no model to check
    if runs.empty:
        return "not run", False
    ok = runs.checkpoint_ok.astype("boolean").fillna(False)
    n, bad = len(runs), int((~ok).sum())
    adapters = runs[runs.method.isin(adapter_methods())] if "method" in runs else runs.iloc[:0]
    merged = " (merged adapters too)" if not adapters.empty else ""
    if bad:
        return f"FAILED for {bad} of {n} runs (see summary.md)", True
    return f"{n} of {n} runs reproduce their saved predictions and metrics{merged}", False


def stability_text(runs: pd.DataFrame | None, stability: pd.DataFrame | None) -> tuple[str, bool]:
    """('2 of 24 runs unstable (1 diverged); seeds disagree in 1 setting', alarm?) from runs.csv's
    stability columns and stability.csv's seed-heterogeneity flags."""
    if runs is None or runs.empty or "unstable" not in runs:
        return "not computed", False
    ran = runs[runs.status != "missing"] if "status" in runs else runs
    unstable = int(ran.unstable.astype("boolean").fillna(False).sum())
    diverged = int((ran.status == "diverged").sum()) if "status" in ran else 0
    text = f"{unstable} of {len(ran)} runs unstable" + (f" ({diverged} diverged)" if diverged else "")
    if stability is not None and "seeds_disagree" in stability:
        disagree = int(stability.seeds_disagree.astype("boolean").fillna(False).sum())
        text += f"; seeds disagree beyond their intervals in {disagree} of {len(stability)} settings"
    return text, bool(unstable)


def baseline_text(runs: pd.DataFrame | None) -> tuple[str, bool]:
    """('3 of 8 runs do not beat the trivial baseline', alarm?) from runs.csv's beats_trivial."""
    if runs is None or runs.empty or "beats_trivial" not in runs:
        return "no baselines", False
    judged = runs[runs.beats_trivial.notna() & runs.status.isin(USABLE_STATUSES)]
    below = int((~judged.beats_trivial.astype(bool)).sum())
    if below:
        return f"{below} of {len(judged)} runs do not beat the trivial baseline", True
    return f"all {len(judged)} runs beat the trivial baseline", False


def verdict_counts(values: Iterable[str]) -> str:
    """'1 supported, 2 inconclusive (3 comparisons)': one per (method, task) vs the reference."""
    values = [str(v) for v in values if isinstance(v, str) and v]
    if not values:
        return "no verdict yet"
    counts = pd.Series(values).value_counts()
    order = ["supported", "not supported", "inconclusive"]
    names = sorted(counts.index, key=lambda v: order.index(v) if v in order else len(order))
    return ", ".join(f"{counts[v]} {v}" for v in names) + \
        f" ({len(values)} comparison{'s' if len(values) != 1 else ''})"


def headline(status: pd.DataFrame, verdicts: pd.DataFrame, runs: pd.DataFrame | None = None) -> dict[str, str]:
    """Short strings for the report's landing page and the Overview entry's labels."""
    planned = status[status.planned] if "planned" in status else status
    n = len(planned)
    counts = planned.status.value_counts()
    done = int(counts.get("completed", 0) + counts.get("stopped_early", 0))
    bad = int(counts.get("failed", 0) + counts.get("missing", 0))
    diverged = int(counts.get("diverged", 0))
    finished = (f"{done} of {n} finished ({int(counts.get('stopped_early', 0))} stopped early), "
                + (f"{diverged} diverged, " if diverged else "") + f"{bad} failed or missing")
    return {"page": "study overview", "runs": finished, "checks": checks_text(runs)[0],
            "H1": verdict_counts(verdicts.h1_verdict) if not verdicts.empty else "no verdict yet",
            "H2": verdict_counts(verdicts.h2_verdict) if not verdicts.empty else "no verdict yet"}


def _cell(r, col):
    """A verdicts.csv cell, None where the column is absent or the value NaN."""
    value = r.get(col)
    try:
        return None if value is None or pd.isna(value) else value
    except (TypeError, ValueError):
        return value


def _ci(r, mean, lo, hi) -> str:
    """'0.12 [0.05, 0.19]', 'n/a' without a value."""
    if _cell(r, mean) is None:
        return "n/a"
    text = fmt(r[mean])
    if _cell(r, lo) is not None and _cell(r, hi) is not None:
        text += f" [{fmt(r[lo])}, {fmt(r[hi])}]"
    return text


def _yes_no(value) -> str:
    """A boolean cell as read from CSV (bool, 'True'/'False', NaN) -> 'yes' / 'no' / 'n/a'."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return {"true": "yes", "false": "no"}.get(value.strip().lower(), value)
    return "yes" if bool(value) else "no"


def _why(r, verdict: str, reason: str) -> str:
    """The verdict's reason where it is inconclusive (what would settle it), else empty."""
    if str(_cell(r, verdict) or "") != "inconclusive":
        return ""
    return str(_cell(r, reason) or "no reason recorded")


def h1_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per (method, task) comparison, H1 in full: its mode and tolerance (h1_mode, h1_tolerance),
    method − reference with CI, the quantity judged with its CI (relative mode: the relative drop;
    absolute mode: h1_difference = mean reference − mean method), the verdict and, where
    inconclusive, why."""
    rows = []
    for _, r in verdicts.iterrows():
        mode, tol = _cell(r, "h1_mode"), _cell(r, "h1_tolerance")
        if mode == "absolute":
            judged = "reference − method " + _ci(r, "h1_difference", "h1_ci_low", "h1_ci_high")
        else:
            judged = "relative drop " + _ci(r, "h1_relative_drop", "h1_ci_low", "h1_ci_high")
        rows.append({"method": r.get("method"), "task": r.get("task"), "metric": r.get("metric"),
                     "H1 rule": f"{mode or 'n/a'}, tolerance {fmt(tol)}",
                     "method − reference (CI)": _ci(r, "method_minus_reference", "diff_ci_low", "diff_ci_high"),
                     "judged (CI)": judged, "analysis": _cell(r, "analysis"),
                     "H1": _cell(r, "h1_verdict") or "unknown", "why inconclusive": _why(r, "h1_verdict", "h1_reason")})
    return pd.DataFrame(rows)


def h2_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per (method, task) comparison, H2 in full: drift reduction with CI, the drift difference, the
    permutation test's Holm-adjusted and raw p-values (with the smallest p the seeds allow and α),
    the seed floor and whether the difference exceeds it, the verdict, the test's sentence (h2_test)
    and, where inconclusive, why."""
    rows = []
    for _, r in verdicts.iterrows():
        drift = " ".join(str(v) for v in (_cell(r, "h2_drift_metric"), _cell(r, "h2_pooling")) if v is not None)
        rows.append({"method": r.get("method"), "task": r.get("task"), "drift": drift or "n/a",
                     "drift reduction (CI)": _ci(r, "h2_drift_reduction", "h2_ci_low", "h2_ci_high"),
                     "reference − method drift": _cell(r, "h2_difference"),
                     "p (Holm)": _cell(r, "h2_p_holm"), "p (raw)": _cell(r, "h2_p_value"),
                     "smallest possible p": _cell(r, "h2_min_p"), "α": _cell(r, "h2_alpha"),
                     "seed floor": _cell(r, "h2_seed_floor"),
                     "exceeds floor": _yes_no(_cell(r, "h2_exceeds_floor")),
                     "H2": _cell(r, "h2_verdict") or "unknown", "test": _cell(r, "h2_test") or "",
                     "why inconclusive": _why(r, "h2_verdict", "h2_reason")})
    return pd.DataFrame(rows)


def _methods_html(study: Mapping) -> str:
    """The configured methods: name, what it is (Method.describe) and peft's own settings."""
    methods = study.get("methods", {}) or {}
    rows = [{"method": method_name(m), "description": method_label(m),
             "reference": "yes" if m == reference_method() else "",
             "peft settings": ", ".join(f"{k} = {v}" for k, v in ((methods.get(m) or {}).get("peft") or {}).items())
             or "none: every weight trains"}
            for m in method_order(methods) if m in methods]
    return "<p><b>Methods</b></p>" + html_table(pd.DataFrame(rows)) if rows else ""


def _setup_html(study: Mapping) -> str:
    model = study.get("model", {}) or {}
    tasks = study.get("tasks", []) or []
    task_defs = study.get("task_defs", {}) or {}
    grid = study.get("grid", {}) or {}
    parts = [f"<p><b>Model</b>: <code>{escape(model.get('name_or_path'))}</code> "
             f"({escape(model.get('family', ''))})</p>"]
    trows = [{"task": t, "type": task_defs.get(t, {}).get("type", ""),
              "main metric": task_defs.get(t, {}).get("main_metric", "")} for t in tasks]
    parts.append("<p><b>Tasks</b></p>" + html_table(pd.DataFrame(trows)))
    parts.append(_methods_html(study))
    lrs = grid.get("learning_rates", {})
    grows = []
    for method in method_order(lrs):
        for kind, values in (lrs.get(method) or {}).items():
            grows.append({"method": method_name(method), "task kind": kind,
                          "learning rates": ", ".join(lr_text(v) for v in values)})
    # tasks with their own seeds (task_overrides.<task>.grid.seeds) are named beside the grid's
    own = {t: seeds for t, seeds in (study.get("task_seeds") or {}).items()
           if list(seeds) != list(grid.get("seeds", []))}
    own_text = "".join(f"; {t}: seeds {', '.join(map(str, seeds))}" for t, seeds in own.items())
    parts.append("<p><b>Grid</b>: batch sizes " + escape(", ".join(map(str, grid.get("batch_sizes", [])))) +
                 "; seeds " + escape(", ".join(map(str, grid.get("seeds", [])))) + escape(own_text) + "</p>" +
                 html_table(pd.DataFrame(grows)))
    return "\n".join(parts)


def _runs_html(status: pd.DataFrame) -> list[str]:
    """Run counts by status per task x method, then the runs that did not complete normally."""
    body = ["<h2>Runs</h2>"]
    planned_only = status[status.planned]
    if not planned_only.empty:
        pivot = planned_only.assign(n=1).pivot_table(index=["task", "method"], columns="status", values="n",
                                                     aggfunc="sum", fill_value=0, sort=False).reset_index()
        for s in ("completed", "stopped_early", "diverged", "failed", "missing"):
            if s not in pivot:
                pivot[s] = 0
        pivot = pivot[["task", "method", "completed", "stopped_early", "diverged", "failed", "missing"]]
        pivot.columns = ["task", "method", "completed", "stopped early", "diverged", "failed", "missing"]
        body.append(html_table(pivot))
    problems = status[status.status.isin(NOT_COMPLETED) | ~status.planned]
    body.append("<p><b>Runs that did not complete normally</b> "
                "(stopped early = the early-stopping rule ended training before the step budget; "
                "diverged = training stopped on a non-finite or exploding loss, a result left out of means and "
                "verdicts; "
                "missing = planned but no result, i.e. failed or not run yet)</p>")
    body.append(html_table(problems[RUN_KEYS + ["status"]], badges=("status",)))
    return body


def overview_page(runs: pd.DataFrame | None, best: pd.DataFrame | None, summary_md: str | None,
                  verdicts: pd.DataFrame | None, study: Mapping, planned: Sequence[Mapping] | None,
                  stability: pd.DataFrame | None = None) -> tuple[str, dict]:
    """(HTML of the Overview page, headline dict)."""
    status = run_status(runs, planned)
    verdicts = pd.DataFrame() if verdicts is None else verdicts
    head = headline(status, verdicts, runs)
    checks, alarm = checks_text(runs)
    stable, unstable = stability_text(runs, stability)
    baselines, below = baseline_text(runs)
    analysis = study.get("analysis", {}) or {}
    reference = reference_method() or "the reference method"
    h1, h2 = intro.hypotheses(analysis)
    conf = analysis.get("confidence", 0.95)
    body = ["<h1>ftdrift — how fine-tuning methods change a model's representations</h1>",
            "<h2>Study question</h2>",
            f"<p>{escape(intro.question(analysis, reference))} Every other method is compared with the reference, "
            f"task by task.</p><ul><li><b>H1</b>: {escape(h1)}.</li><li><b>H2</b>: {escape(h2)}.</li></ul>",
            "<h2>Headline</h2>",
            f'<div class="kpi">Runs<b>{escape(head["runs"])}</b></div>',
            f'<div class="kpi{" alarm" if alarm else ""}">Checkpoint validation<b>{escape(checks)}</b></div>',
            f'<div class="kpi{" alarm" if unstable else ""}">Training stability<b>{escape(stable)}</b></div>',
            f'<div class="kpi{" alarm" if below else ""}">Baselines<b>{escape(baselines)}</b></div>',
            f'<div class="kpi">H1 (within tolerance of the reference)<b>{escape(head["H1"])}</b></div>',
            f'<div class="kpi">H2 (drifts less than the reference)<b>{escape(head["H2"])}</b></div>']
    if not verdicts.empty:
        body += [f"<h2>H1: each method's validation metric within tolerance of {escape(reference)}'s</h2>",
                 html_table(h1_table(verdicts), badges=("H1",)),
                 f"<h2>H2: each method drifts less than {escape(reference)}</h2>",
                 '<p class="muted">p: exact permutation test over seeds of the drift difference, Holm-adjusted '
                 "across every method × task comparison (with few seeds the smallest possible p may exceed α: then "
                 "H2 cannot be supported); seed floor: the drift between runs of one setting that differ only in "
                 "their seed, in drift units.</p>",
                 html_table(h2_table(verdicts), badges=("H2",))]
    body += ["<h2>Setup</h2>", _setup_html(study)]
    body += _runs_html(status)
    if best is not None and not best.empty:
        cols = [c for c in ("task", "method", "lr", "batch_size", "main_metric", "n_seeds", "n_diverged", "val_mean",
                            "val_ci_low", "val_ci_high", "trivial_val", "probe_val", "beats_trivial", "drift_mean",
                            "trainable_fraction") if c in best]
        body += ["<h2>Chosen settings</h2>",
                 f'<p class="muted">Chosen on dev; validation mean and {int(round(100 * conf))} % CI over seeds.</p>',
                 html_table(best[cols])]
    body.append("<h2>All runs</h2>")
    extra = [c for c in ("unstable", "stability_note", "beats_trivial") if runs is not None and c in runs]
    if extra:
        status = status.merge(runs[RUN_KEYS + extra], on=RUN_KEYS, how="left")
    body.append(html_table(status[RUN_KEYS + ["status"] + extra], badges=("status",)))
    if summary_md:
        body += ["<h2>summary.md</h2>", f"<details><summary>as written by the aggregate step</summary>"
                 f"{markdown_html(summary_md)}</details>"]
    return html_page("ftdrift overview", "\n".join(body)), head
