"""Convergence and instability detectors on a run's train_log.csv, and how far seeds disagree.

A train_log.csv is the Trainer's log history as a table: training rows (`loss`, the mean over
the logging window; `grad_norm`, the pre-clip norm of the window's last optimizer step;
`grad_clipped_fraction`, the share of the window's steps that were clipped; `learning_rate`;
`step`), evaluation rows (`eval_loss`, and for classification `eval_<metric>`), and one summary
row (`train_runtime`; the Trainer's `train_loss` is left out, see ftdrift.training.recipe.train_log). NaN and missing cells are the same thing in a CSV, so a
training row is recognised by its `learning_rate` (the Trainer logs it with every training
loss, also when that loss is NaN), or by a `loss` where the log has no learning rates.

Settings: config `analysis.stability` (plateau_evals, plateau_tolerance, spike_threshold,
unstable_clipped_fraction, metric_fraction, heterogeneity_alpha). Pure pandas/numpy/scipy.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

MAD_TO_SD = 1.4826  # 1 / Phi^-1(3/4): the MAD of a normal sample times this estimates its SD
MEAN_AD_TO_SD = 1.2533  # sqrt(pi / 2): the same for the mean absolute deviation (used when the MAD is 0)
LOSS_TREND_WINDOW = 5  # a logged loss is compared with the median of up to this many previous ones
LOSS_TREND_MIN = 3  # ... and only once that many are there (the first entries have no trend yet)
MIN_SPIKE_ENTRIES = 3  # fewer values give no scale to call anything a spike


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """`frame[name]` as floats; all NaN when the column is missing."""
    if name not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[name], errors="coerce").astype(float)


def training_rows(log: pd.DataFrame) -> pd.DataFrame:
    """The training entries of a log, by step: columns step, loss, grad_norm, grad_clipped_fraction."""
    marker = "learning_rate" if "learning_rate" in log.columns else "loss"
    rows = log[_column(log, marker).notna()]
    steps = _column(rows, "step") if "step" in rows.columns else pd.Series(np.arange(1, len(rows) + 1.0),
                                                                               index=rows.index)
    out = pd.DataFrame({"step": steps, "loss": _column(rows, "loss"), "grad_norm": _column(rows, "grad_norm"),
                        "grad_clipped_fraction": _column(rows, "grad_clipped_fraction")})
    return out.sort_values("step", kind="stable").reset_index(drop=True)


def evaluation_rows(log: pd.DataFrame, dev_metric: str | None) -> pd.DataFrame:
    """The evaluation entries by step: columns step, eval_loss, metric (NaN without `dev_metric`)."""
    rows = log[_column(log, "eval_loss").notna()]
    column = None if dev_metric is None else dev_metric if dev_metric.startswith("eval_") else f"eval_{dev_metric}"
    out = pd.DataFrame({"step": _column(rows, "step"), "eval_loss": _column(rows, "eval_loss"),
                        "metric": _column(rows, column) if column else np.nan})
    return out.sort_values("step", kind="stable").reset_index(drop=True)


def robust_sd(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation from the median; where that is 0 (over half the
    values equal) 1.2533 x the mean absolute deviation from the median (the fallback of Iglewicz &
    Hoaglin's modified z-score, 1993). 0 when all values are equal; NaN for no values."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan
    deviation = np.abs(values - np.median(values))
    mad = float(np.median(deviation))
    return MAD_TO_SD * mad if mad > 0 else MEAN_AD_TO_SD * float(deviation.mean())


def count_spikes(values, threshold: float) -> int:
    """How many finite `values` lie more than `threshold` robust SDs (robust_sd) above their
    median; 0 with fewer than MIN_SPIKE_ENTRIES finite values or no spread."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < MIN_SPIKE_ENTRIES:
        return 0
    scale = robust_sd(values)
    if not scale > 0:
        return 0
    return int(np.sum(values > np.median(values) + threshold * scale))


def loss_trend_residuals(losses) -> np.ndarray:
    """Each finite logged loss minus the median of the up to LOSS_TREND_WINDOW finite losses before
    it, for the entries with at least LOSS_TREND_MIN predecessors. A falling loss has negative
    residuals: the normal early decrease is never above its trend."""
    losses = np.asarray(losses, dtype=float)
    losses = losses[np.isfinite(losses)]
    return np.array([losses[i] - np.median(losses[max(0, i - LOSS_TREND_WINDOW):i])
                     for i in range(LOSS_TREND_MIN, losses.size)], dtype=float)


def count_loss_spikes(losses, threshold: float) -> int:
    """Logged losses more than `threshold` robust SDs above their trend (loss_trend_residuals > 0 by
    threshold x robust_sd of the residuals): a jump is measured against the residuals' own noise,
    not against the descent, so a loss that only falls, or flattens, has none."""
    residuals = loss_trend_residuals(losses)
    if residuals.size < MIN_SPIKE_ENTRIES:
        return 0
    scale = robust_sd(residuals)
    if not scale > 0:
        return 0
    return int(np.sum(residuals > threshold * scale))


def clipped_fraction(train: pd.DataFrame) -> float:
    """Share of clipped optimizer steps over the run: each window's grad_clipped_fraction weighted by
    its step count (the step difference to the previous training entry); NaN when none is logged."""
    steps = train["step"].to_numpy(float)
    windows = np.diff(np.concatenate([[0.0], steps]))
    fractions = train["grad_clipped_fraction"].to_numpy(float)
    ok = np.isfinite(fractions) & (windows > 0)
    if not ok.any():
        return math.nan
    return float(np.sum(fractions[ok] * windows[ok]) / np.sum(windows[ok]))


def has_converged(dev_losses, k: int, tolerance: float) -> bool | None:
    """The last `k` dev losses within relative spread (max - min) / min <= `tolerance`; None with
    fewer than `k` evaluations, False when any of them is non-finite."""
    last = np.asarray(dev_losses, dtype=float)[-k:]
    if last.size < k:
        return None
    if not np.isfinite(last).all():
        return False
    low, high = float(last.min()), float(last.max())
    if low <= 0:
        return high == low
    return bool((high - low) / low <= tolerance)


def steps_to_target(evals: pd.DataFrame, fraction: float) -> int | None:
    """The first evaluation step at which the run had made `fraction` of its total improvement.

    Improvement is measured from the first evaluation, in the dev metric where one is logged (higher
    is better: accuracy, F1, ...), else in the dev loss (extractive QA logs only eval_loss): the
    first step where metric - first >= fraction x (final - first), or first - loss >= fraction x
    (first - final). From the first evaluation, not as a fraction of the final value: accuracy
    starts near chance (0.5), so "90 % of the final accuracy" would be reached at once. None when
    the run did not improve (or has one evaluation). Non-finite evaluations are left out.
    """
    metric = evals["metric"].to_numpy(float)
    use_metric = np.isfinite(metric).any()
    values = metric if use_metric else evals["eval_loss"].to_numpy(float)
    steps = evals["step"].to_numpy(float)
    keep = np.isfinite(values) & np.isfinite(steps)
    values, steps = values[keep], steps[keep]
    if values.size == 0:
        return None
    gain = (values - values[0]) if use_metric else (values[0] - values)
    if not gain[-1] > 0:
        return None
    reached = gain >= fraction * gain[-1]
    return int(steps[np.argmax(reached)])


def stability_note(diverged: bool, grad_spikes: int, loss_spikes: int, clipped: float, limit: float) -> str:
    """The reasons a run counts as unstable, e.g. "2 grad-norm spikes; 63 % steps clipped"; "" if none."""
    parts = ["diverged"] if diverged else []
    if grad_spikes:
        parts.append(f"{grad_spikes} grad-norm spike{'s' * (grad_spikes != 1)}")
    if loss_spikes:
        parts.append(f"{loss_spikes} loss spike{'s' * (loss_spikes != 1)}")
    if clipped > limit:
        parts.append(f"{100 * clipped:.0f} % steps clipped")
    return "; ".join(parts)


def run_stability(log: pd.DataFrame, *, dev_metric: str | None, settings: dict, status: str | None = None) -> dict:
    """Convergence and instability of one run from its train_log.csv (runs.csv's columns).

    `dev_metric`: the classification main metric (`accuracy` or `eval_accuracy`), None for tasks
    whose log has only the dev loss; `settings`: config `analysis.stability`; `status`:
    metrics.json's meta.status. Returns exactly these keys:

    converged         bool; None with fewer than plateau_evals evaluations; False if diverged
                      (has_converged on the dev losses)
    diverged          status "diverged", or a non-finite logged training loss
    grad_norm_spikes  int, count_spikes of the logged gradient norms (spike_threshold robust SDs
                      above the run's median)
    loss_spikes       int, count_loss_spikes of the logged training losses (above their running
                      median of the previous LOSS_TREND_WINDOW entries)
    clipped_fraction  float in [0, 1], NaN when not logged (share of clipped optimizer steps)
    unstable          diverged, any spike, or clipped_fraction > unstable_clipped_fraction
    steps_to_target   int or None: steps_to_target with metric_fraction (dev metric, else dev loss)
    stability_note    str, the reasons for `unstable` ("" if none)

    Works on any log: empty, without evaluations, with columns missing.
    """
    train = training_rows(log)
    evals = evaluation_rows(log, dev_metric)
    diverged = status == "diverged" or bool((~np.isfinite(train["loss"].to_numpy(float))).any())
    grad_spikes = count_spikes(train["grad_norm"], settings["spike_threshold"])
    loss_spikes = count_loss_spikes(train["loss"], settings["spike_threshold"])
    clipped = clipped_fraction(train)
    limit = settings["unstable_clipped_fraction"]
    converged = has_converged(evals["eval_loss"], settings["plateau_evals"], settings["plateau_tolerance"])
    return {
        "converged": False if diverged else converged,
        "diverged": diverged,
        "grad_norm_spikes": grad_spikes,
        "loss_spikes": loss_spikes,
        "clipped_fraction": clipped,
        "unstable": bool(diverged or grad_spikes or loss_spikes or clipped > limit),
        "steps_to_target": steps_to_target(evals, settings["metric_fraction"]),
        "stability_note": stability_note(diverged, grad_spikes, loss_spikes, clipped, limit),
    }


def seed_heterogeneity(values, ci_low, ci_high, confidence: float) -> dict:
    """Do per-seed estimates disagree beyond their own uncertainty? Cochran's Q (Cochran 1954, "The
    combination of estimates from different experiments", Biometrics 10:101-129) and I² (Higgins &
    Thompson 2002, "Quantifying heterogeneity in a meta-analysis", Stat Med 21:1539-1558).

    Each seed's standard error comes from its percentile-bootstrap CI at `confidence`:
    se = (high - low) / (2 z), z = Phi^-1((1 + confidence) / 2). With weights w = 1 / se²,
    Q = sum w (y - sum(w y) / sum w)², df = k - 1, p = P(chi²_df >= Q), I² = max(0, (Q - df) / Q)
    (0 when Q = 0). Returns {q, df, p_value, i2}, all NaN for fewer than 2 seeds or when any value
    or standard error is NaN, infinite or 0.

    Q assumes independent estimates. Seeds scored on the same validation examples have positively
    correlated sampling errors (Q is then about (1 - rho) chi²_df under agreement), so the test is
    conservative: it flags seeds that disagree far beyond their intervals.
    """
    y = np.asarray(values, dtype=float)
    z = stats.norm.ppf((1 + confidence) / 2)
    se = (np.asarray(ci_high, dtype=float) - np.asarray(ci_low, dtype=float)) / (2 * z)
    if y.size < 2 or se.shape != y.shape or not (np.isfinite(y).all() and np.isfinite(se).all() and (se > 0).all()):
        return {"q": math.nan, "df": math.nan, "p_value": math.nan, "i2": math.nan}
    w = 1 / se**2
    q = float(np.sum(w * (y - np.sum(w * y) / np.sum(w)) ** 2))
    df = y.size - 1
    return {"q": q, "df": df, "p_value": float(stats.chi2.sf(q, df)), "i2": max(0.0, (q - df) / q) if q > 0 else 0.0}
