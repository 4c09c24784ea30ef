"""Stability detectors (ftdrift.analysis.stability) on synthetic train_log.csv files written here
(a converged, a diverged and a spiky run, and tiny ones), with every expected value worked out by
hand in the comments; Cochran's Q and I² against a hand computation."""

import math

import numpy as np
import pandas as pd
import pytest

from ftdrift.analysis.stability import run_stability, seed_heterogeneity

SETTINGS = {"plateau_evals": 3, "plateau_tolerance": 0.05, "spike_threshold": 6.0, "unstable_clipped_fraction": 0.5,
            "metric_fraction": 0.9, "heterogeneity_alpha": 0.01}
KEYS = {"converged", "diverged", "grad_norm_spikes", "loss_spikes", "clipped_fraction", "unstable", "steps_to_target",
        "stability_note"}


def write_log(tmp_path, train: list[tuple], evals: list[tuple], metric="eval_accuracy") -> pd.DataFrame:
    """A train_log.csv as the job writes it: training rows (step, loss, grad_norm, clipped fraction,
    learning rate), evaluation rows (step, eval_loss[, metric]) after the training row of their
    step, and the summary row; read back, so NaN cells are empty as in the real file."""
    rows = [{"step": s, "loss": loss, "grad_norm": g, "grad_clipped_fraction": c, "learning_rate": 1e-4}
            for s, loss, g, c in train]
    for e in evals:
        row = {"step": e[0], "eval_loss": e[1]}
        if len(e) > 2:
            row[metric] = e[2]
        rows.append(row)
    rows.sort(key=lambda r: (r["step"], "eval_loss" in r))
    rows.append({"step": rows[-1]["step"] if rows else 0, "train_loss": 0.5, "train_runtime": 1.0})
    path = tmp_path / "train_log.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return pd.read_csv(path)


def test_converged_run(tmp_path):
    losses = [0.70, 0.60, 0.52, 0.46, 0.42, 0.40, 0.39, 0.385, 0.38, 0.378]
    norms = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.02, 0.98, 1.01, 0.99]
    clipped = [0.5, 0.3, 0.2, 0.1, 0, 0, 0, 0, 0, 0]
    train = [(10 * (i + 1), loss, g, c) for i, (loss, g, c) in enumerate(zip(losses, norms, clipped))]
    evals = [(20, 0.60, 0.70), (40, 0.50, 0.80), (60, 0.45, 0.85), (80, 0.44, 0.86), (100, 0.44, 0.86)]
    result = run_stability(write_log(tmp_path, train, evals), dev_metric="accuracy", settings=SETTINGS,
                           status="completed")
    assert set(result) == KEYS
    # last 3 dev losses 0.45, 0.44, 0.44: (0.45 - 0.44) / 0.44 = 0.023 <= 0.05
    assert result["converged"] is True and result["diverged"] is False
    # grad norms: median 1.0, MAD 0.02 -> robust SD 0.0297, limit 1.178: none above
    assert result["grad_norm_spikes"] == 0
    # losses minus the median of up to 5 before (from the 4th): -0.14, -0.14, -0.12, -0.07, -0.035, -0.02,
    # -0.012: a falling loss is never above its trend
    assert result["loss_spikes"] == 0
    assert result["clipped_fraction"] == pytest.approx(1.1 / 10)  # windows of 10 steps each: mean of the fractions
    assert result["unstable"] is False and result["stability_note"] == ""
    # gains over the first evaluation (0.70): 0.10, 0.15, 0.16, 0.16; 0.9 x 0.16 = 0.144, first reached at step 60
    assert result["steps_to_target"] == 60


def test_diverged_run(tmp_path):
    # the job's diverged window: loss and grad norm NaN (empty cells), its learning rate logged
    train = [(2, 0.70, 1.5, 1.0), (4, 0.65, 2.0, 0.5), (6, math.nan, math.nan, math.nan)]
    log = write_log(tmp_path, train, [(3, 0.69, 0.6)])
    for status in ("diverged", None):  # from the status, or from the log's NaN loss alone
        result = run_stability(log, dev_metric="eval_accuracy", settings=SETTINGS, status=status)
        assert result["diverged"] is True and result["converged"] is False
        assert result["grad_norm_spikes"] == 0 and result["loss_spikes"] == 0  # too few entries for a scale
        assert result["clipped_fraction"] == pytest.approx((1.0 * 2 + 0.5 * 2) / 4)  # the NaN window has no weight
        assert result["unstable"] is True
        assert result["stability_note"] == "diverged; 75 % steps clipped"
        assert result["steps_to_target"] is None  # one evaluation: no improvement to measure
    infinite = write_log(tmp_path, [(2, 0.7, 1.0, 0.0), (4, math.inf, 1.0, 0.0)], [])
    assert run_stability(infinite, dev_metric=None, settings=SETTINGS, status="completed")["diverged"] is True


def test_spiky_run(tmp_path):
    losses = [1.0, 0.9, 0.8, 0.75, 0.7, 0.68, 2.5, 0.66, 0.64, 0.63, 0.62, 0.61]
    norms = [1.0, 1.2, 0.8, 1.1, 0.9, 9.0, 1.0, 1.05, 0.95, 12.0, 1.0, 1.0]
    train = [(5 * (i + 1), loss, g, 0.1) for i, (loss, g) in enumerate(zip(losses, norms))]
    result = run_stability(write_log(tmp_path, train, [(30, 1.1, 0.5), (60, 0.9, 0.6)]), dev_metric="accuracy",
                           settings=SETTINGS, status="completed")
    # grad norms: median 1.0; |deviations| sorted 0,0,0,0,.05,.05,.1,.1,.2,.2,8,11 -> MAD 0.075,
    # robust SD 0.1112, limit 1 + 6 x 0.1112 = 1.667: 9.0 and 12.0
    assert result["grad_norm_spikes"] == 2
    # residuals to the running median: -0.15, -0.15, -0.12, 2.5 - 0.75 = 1.75, -0.09, -0.06, -0.05,
    # -0.04, -0.03; their median -0.06, MAD 0.03 -> robust SD 0.0445, limit 6 x 0.0445 = 0.267: one
    assert result["loss_spikes"] == 1
    assert result["diverged"] is False and result["unstable"] is True
    assert result["clipped_fraction"] == pytest.approx(0.1)
    assert result["stability_note"] == "2 grad-norm spikes; 1 loss spike"
    assert result["converged"] is None  # 2 evaluations < 3


def test_dev_loss_target_and_plateau_without_a_dev_metric(tmp_path):
    """Extractive QA logs only eval_loss: total reduction 2.0 - 0.8 = 1.2, 90 % of it (1.08) first
    reached at step 30 (2.0 - 0.9 = 1.1); last 3 losses 1.0, 0.9, 0.8 spread 0.2 / 0.8 = 0.25."""
    evals = [(10, 2.0), (20, 1.0), (30, 0.9), (40, 0.8)]
    train = [(10, 3.0, 1.0, 0.0), (20, 1.5, 1.0, 0.0), (30, 1.0, 1.0, 0.0), (40, 0.9, 1.0, 0.0)]
    for dev_metric in (None, "f1"):  # f1 named but not logged: the dev loss
        result = run_stability(write_log(tmp_path, train, evals), dev_metric=dev_metric, settings=SETTINGS)
        assert result["steps_to_target"] == 30 and result["converged"] is False
    rising = write_log(tmp_path, train, [(10, 1.0), (20, 1.2)])
    assert run_stability(rising, dev_metric=None, settings=SETTINGS)["steps_to_target"] is None


@pytest.mark.parametrize("train, evals", [([], []), ([(1, 0.7, 1.0, 0.0)], []), ([], [(3, 4.99), (6, 4.97)]),
                                          ([(2, 0.7, 1.0, 1.0), (4, 0.6, 1.1, 0.0)], [(4, 0.7, 0.5)])])
def test_tiny_logs(tmp_path, train, evals):
    log = write_log(tmp_path, train, evals) if train or evals else pd.DataFrame()
    result = run_stability(log, dev_metric="accuracy", settings=SETTINGS, status="completed")
    assert set(result) == KEYS
    assert result["converged"] is None and result["diverged"] is False and result["unstable"] is False
    assert result["grad_norm_spikes"] == 0 and result["loss_spikes"] == 0 and result["stability_note"] == ""
    if len(train) == 2:
        assert result["clipped_fraction"] == 0.5 and result["steps_to_target"] is None  # one evaluation
    elif not train:
        assert math.isnan(result["clipped_fraction"])
        assert result["steps_to_target"] == (6 if evals else None)  # accuracy not logged: the dev loss
    minimal = pd.DataFrame({"loss": [0.7, 0.6]})  # no step, learning rate or evaluation columns at all
    assert run_stability(minimal, dev_metric=None, settings=SETTINGS)["unstable"] is False


def test_cochran_q_and_i2_by_hand():
    """Standard errors 0.01, 0.02, 0.02 (CIs y +- z se at 95 %): weights 10000, 2500, 2500; pooled
    (8000 + 2125 + 2250) / 15000 = 0.825; Q = 10000 x 0.025² + 2500 x 0.025² + 2500 x 0.075²
    = 6.25 + 1.5625 + 14.0625 = 21.875 on 2 df; chi² with 2 df has survival exp(-Q / 2);
    I² = (21.875 - 2) / 21.875."""
    z = 1.959963984540054
    y, se = np.array([0.80, 0.85, 0.90]), np.array([0.01, 0.02, 0.02])
    result = seed_heterogeneity(y, y - z * se, y + z * se, 0.95)
    assert result["q"] == pytest.approx(21.875, rel=1e-9) and result["df"] == 2
    assert result["p_value"] == pytest.approx(math.exp(-21.875 / 2), rel=1e-9)
    assert result["i2"] == pytest.approx(19.875 / 21.875, rel=1e-9)
    same = seed_heterogeneity([0.8, 0.8], [0.7, 0.75], [0.9, 0.85], 0.95)
    assert same["q"] == 0 and same["i2"] == 0 and same["p_value"] == pytest.approx(1.0)


@pytest.mark.parametrize("values, low, high", [([0.8], [0.7], [0.9]), ([0.8, 0.9], [0.8, 0.8], [0.8, 1.0]),
                                               ([0.8, math.nan], [0.7, 0.8], [0.9, 1.0]),
                                               ([0.8, 0.9], [0.7, math.nan], [0.9, 1.0]), ([], [], [])])
def test_cochran_q_undefined(values, low, high):
    result = seed_heterogeneity(values, low, high, 0.95)
    assert set(result) == {"q", "df", "p_value", "i2"} and all(math.isnan(v) for v in result.values())
