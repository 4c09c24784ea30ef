"""The aggregate step's two human-readable tables: summary.md (Markdown) and tables.tex (the paper's LaTeX)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ftdrift.core.drift_metrics import metric_info


def _drift_text(analysis: dict) -> str:
    info = metric_info(analysis["h2_metric"])
    return (f"Drift = mean over layers of {'1 − ' if info.similarity else ''}{info.name} against the base model "
            f"({analysis['h2_pooling']} pooling) at the last snapshot")


def latex_tables(best: pd.DataFrame, verdicts: pd.DataFrame, analysis: dict) -> str:
    """The paper's two tables: best settings with validation CIs, and the H1/H2 verdicts."""
    pct = int(round(analysis["confidence"] * 100))
    if best.empty:
        return "% ftdrift: no usable run yet (all missing or diverged), no tables\n"
    main = best[["task", "method", "lr", "batch_size", "main_metric", "n_seeds", "val_mean", "val_std",
                 "val_ci_low", "val_ci_high", "trivial_val", "probe_val", "drift_mean"]].rename(columns={
        "trivial_val": "trivial", "probe_val": "probe",
        "batch_size": "batch", "main_metric": "metric", "n_seeds": "seeds", "val_mean": "mean", "val_std": "std",
        "val_ci_low": f"{pct}\\% CI low", "val_ci_high": f"{pct}\\% CI high", "drift_mean": "drift"})
    parts = [main.to_latex(index=False, float_format="%.3f", na_rep="--",
                           caption="Validation metric at the dev-selected setting (mean, std and "
                                   f"{pct}\\% CI over seeds), beside the trivial baseline (majority class; SQuAD v2: "
                                   "no answer) and a linear probe on the frozen base model. "
                                   f"{_drift_text(analysis)}.".replace("−", "-"),
                           label="tab:ftdrift-performance")]
    if not verdicts.empty:
        table = verdicts.assign(h1_change=[_h1_change(r) for r in verdicts.itertuples()],
                                h1_tol=[_h1_tolerance(r, analysis, latex=True) for r in verdicts.itertuples()])
        cols = ["method", "task", "metric", "analysis", "method_minus_reference", "diff_ci_low", "diff_ci_high",
                "h1_change", "h1_tol",
                "h1_verdict", "h2_drift_reduction", "h2_p_holm", "h2_seed_floor", "h2_verdict"]
        table = table[[c for c in cols if c in table]].rename(columns={
            "method_minus_reference": "method - reference", "h1_change": "H1 drop", "h1_tol": "H1 tolerance",
            "h2_p_holm": "H2 p (Holm)",
            "h2_seed_floor": "seed floor"})
        parts.append(table.to_latex(
            index=False, float_format="%.3f", na_rep="--",
            caption=f"Each method vs the reference method {_reference(verdicts, analysis)} ({pct}\\% CIs): H1 (the "
                    "main metric's drop, reference minus method, within a tolerance: relative, "
                    f"{analysis['h1_max_relative_drop']:g} of the reference's score, "
                    "or absolute, in the metric's units, where the task declares h1_absolute_tolerance) and H2 "
                    f"(relative reduction of {analysis['h2_metric']} drift, {analysis['h2_pooling']} pooling, at "
                    f"least {analysis['h2_min_drift_reduction']:g}; {_h2_rule(verdicts, analysis)}).".replace("−", "-"),
            label="tab:ftdrift-hypotheses"))
    return "\n".join(parts)


def _is_absolute(r) -> bool:
    return getattr(r, "h1_mode", "relative") == "absolute"


def _h1_change(r) -> float:
    """H1's judged quantity: the relative drop, or (absolute mode) the difference reference − method."""
    return r.h1_difference if _is_absolute(r) else r.h1_relative_drop


def _h1_tolerance(r, analysis: dict, latex: bool = False) -> str:
    tolerance = getattr(r, "h1_tolerance", analysis["h1_max_relative_drop"])
    return f"{tolerance:g} {'abs.' if latex else 'absolute'}" if _is_absolute(r) else \
        f"{tolerance:g} {'rel.' if latex else 'relative'}"


def _h1_text(r, analysis: dict) -> str:
    what = "reference − method" if _is_absolute(r) else "drop"
    return f"{what} {_fmt(_h1_change(r))}, tolerance {_h1_tolerance(r, analysis)}"


def _h2_rule(verdicts: pd.DataFrame, analysis: dict) -> str:
    """The H2 rule as one clause, with the number of tasks in the Holm family."""
    if "h2_p_value" not in verdicts:
        return "delta-method interval only"
    k = int(np.isfinite(verdicts.h2_p_value.to_numpy(float)).sum())
    alpha = verdicts.h2_alpha.iloc[0] if "h2_alpha" in verdicts else analysis.get("h2_alpha", np.nan)
    family = (f"after Holm correction across the {k} comparison{'' if k == 1 else 's'} (method × task) with a "
              "p-value" if k else "(no comparison has a p-value yet: each needs ≥ 2 seeds per method)")
    return (f"supported only when, in addition, the exact one-sided permutation test over seeds rejects at "
            f"{alpha:g} {family}, and "
            "the drift difference exceeds the seed floor (how far seeds of one setting drift apart)")


def _reference(verdicts: pd.DataFrame, analysis: dict) -> str:
    """The reference method's name: verdicts.csv's `reference` column, else the config's."""
    if "reference" in verdicts and len(verdicts):
        return str(verdicts.reference.iloc[0])
    return str(analysis.get("reference_method", "reference"))


def _fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def summary_markdown(best: pd.DataFrame, verdicts: pd.DataFrame, layers: pd.DataFrame, analysis: dict,
                     failed: pd.DataFrame, left_out: pd.DataFrame | None = None,
                     below_trivial: pd.DataFrame | None = None) -> str:
    pct = int(round(analysis["confidence"] * 100))
    lines = ["# ftdrift summary", ""]
    if left_out is not None and not left_out.empty:
        lines += ["## Runs left out of the means and verdicts", "",
                  "Diverged runs (a finding about their recipe: training stopped when the loss or gradient became "
                  "non-finite or the loss rose far above its start) and planned runs without results (missing: "
                  "failed or not run yet, with analysis.allow_missing_runs).", "",
                  "| task | method | lr | batch | seed | status | why |", "|---|---|---|---|---|---|---|"]
        for r in left_out.itertuples():
            why = r.divergence_reason if isinstance(getattr(r, "divergence_reason", None), str) else ""
            lines.append(f"| {r.task} | {r.method} | {r.lr} | {r.batch_size} | {r.seed} | {r.status} | {why} |")
        lines.append("")
    if not failed.empty:
        lines += ["## 🔴 FAILED: checkpoint validation", "",
                  f"{len(failed)} run(s) whose saved model does not reproduce their predictions and metrics, or whose "
                  "merged adapter differs from the trained one (results/checks/): their numbers cannot be "
                  "trusted.", "", "| task | method | lr | batch | seed | what failed |", "|---|---|---|---|---|---|"]
        for r in failed.itertuples():
            lines.append(f"| {r.task} | {r.method} | {r.lr} | {r.batch_size} | {r.seed} | {r.checkpoint_failure} |")
        lines.append("")
    lines += [f"Best hyperparameters per task and method, chosen on dev; validation metric mean ± std over seeds "
              f"with its {pct} % CI. {_drift_text(analysis)}.", "",
              "Baselines on the same validation split: trivial = the majority class of train (SQuAD v2: always "
              "answering \"no answer\"); linear probe = logistic regression on the frozen base model's pooled "
              "representations (SQuAD v2: a token-level span probe), chosen on dev.", "",
              "| task | method | lr | batch | metric | seeds | validation mean ± std | CI | trivial | linear probe "
              "| drift |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in best.itertuples():
        flag = "" if getattr(r, "beats_trivial", None) is not False else " ⚠ not above trivial"
        lines.append(f"| {r.task} | {r.method} | {r.lr} | {r.batch_size} | {r.main_metric} | {r.n_seeds} | "
                     f"{_fmt(r.val_mean)} ± {_fmt(r.val_std)}{flag} | [{_fmt(r.val_ci_low)}, {_fmt(r.val_ci_high)}] | "
                     f"{_fmt(r.trivial_val)} | {_fmt(r.probe_val)} | {_fmt(r.drift_mean)} |")
    if below_trivial is not None and not below_trivial.empty:
        lines += ["", f"## ⚠ Runs that do not beat the trivial baseline ({len(below_trivial)})", "",
                  "| task | method | lr | batch | seed | validation | trivial |", "|---|---|---|---|---|---|---|"]
        for r in below_trivial.itertuples():
            lines.append(f"| {r.task} | {r.method} | {r.lr} | {r.batch_size} | {r.seed} | {_fmt(r.val_main)} | "
                         f"{_fmt(r.trivial_val)} |")
    qa_rows = best[best.val_HasAns_f1.notna()] if "val_HasAns_f1" in best else best.iloc[:0]
    if not qa_rows.empty:
        lines += ["", "## SQuAD v2: answerable vs unanswerable questions (validation, mean over seeds)", "",
                  "| task | method | HasAns EM | HasAns F1 | NoAns EM | NoAns F1 |", "|---|---|---|---|---|---|"]
        for r in qa_rows.itertuples():
            lines.append(f"| {r.task} | {r.method} | {_fmt(r.val_HasAns_exact, 1)} | {_fmt(r.val_HasAns_f1, 1)} | "
                         f"{_fmt(r.val_NoAns_exact, 1)} | {_fmt(r.val_NoAns_f1, 1)} |")
    if not verdicts.empty:
        reference = _reference(verdicts, analysis)
        lines += ["", f"## Each method vs the reference method ({reference})", "",
                  f"{pct} % confidence intervals; paired over seeds where both methods ran the same seeds. H1: the "
                  f"main metric's drop (reference − method) within a relative tolerance "
                  f"({analysis['h1_max_relative_drop']:g} of the reference's score) or, where the task catalog "
                  f"declares h1_absolute_tolerance, an absolute one (metric units). H2 on {analysis['h2_metric']} "
                  f"drift, {analysis['h2_pooling']} pooling: reduction at least "
                  f"{analysis['h2_min_drift_reduction']:g}; {_h2_rule(verdicts, analysis)}.", "",
                  "| method | task | metric | analysis | method − reference | CI | H1 (main metric within tolerance) "
                  "| H2 (drifts less) | H2 p (Holm) | seed floor |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        notes = []
        for r in verdicts.itertuples():
            p_holm, p_raw = getattr(r, "h2_p_holm", np.nan), getattr(r, "h2_p_value", np.nan)
            lines.append(f"| {r.method} | {r.task} | {r.metric} | {r.analysis} | {_fmt(r.method_minus_reference)} | "
                         f"[{_fmt(r.diff_ci_low)}, "
                         f"{_fmt(r.diff_ci_high)}] | {r.h1_verdict} ({_h1_text(r, analysis)}) | "
                         f"{r.h2_verdict} (reduction {_fmt(r.h2_drift_reduction)}) | {_fmt(p_holm)} (raw "
                         f"{_fmt(p_raw)}) | {_fmt(getattr(r, 'h2_seed_floor', np.nan))} |")
            notes += [f"- {r.method}, {r.task}, {h}: {reason}" for h, verdict, reason in (
                ("H1", r.h1_verdict, getattr(r, "h1_reason", "")), ("H2", r.h2_verdict, getattr(r, "h2_reason", "")))
                if verdict == "inconclusive" and isinstance(reason, str) and reason]
        if notes:
            lines += ["", "Why inconclusive:", "", *notes]
    return "\n".join(lines) + "\n"
