"""The aggregate step's statistics against computations written out here: bootstrap intervals
from the saved predictions, paired and unpaired verdicts, the configured H2 metric and pooling,
and failed checkpoint checks reaching summary.md."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from ftdrift.analysis import tables, verdicts
from ftdrift.core import io
from ftdrift.study.config import load_catalog
from ftdrift.testing import REPO

CATALOG = load_catalog(REPO / "config" / "tasks.yaml")
ANALYSIS = {"confidence": 0.9, "bootstrap_resamples": 200, "h1_max_relative_drop": 0.03,
            "h2_min_drift_reduction": 0.2, "h2_metric": "linear_cka", "h2_pooling": "mean", "h2_alpha": 0.05,
            "reference_method": "full",
            "stability": {"plateau_evals": 3, "plateau_tolerance": 0.05, "spike_threshold": 6.0,
                          "unstable_clipped_fraction": 1.0, "metric_fraction": 0.9, "heterogeneity_alpha": 0.01}}


def test_classification_interval_is_a_percentile_bootstrap_over_examples():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 50)
    predicted = np.where(rng.random(50) < 0.8, labels, 1 - labels)
    records = [{"id": f"e{i}", "text": "x", "label": int(y)} for i, y in enumerate(labels)]
    saved = {"predictions": {f"e{i}": int(p) for i, p in enumerate(predicted)}}
    low, high = tables.main_metric_ci(records, saved, CATALOG["sst2"], 200, 0.9, seed=7)
    draws = np.random.default_rng(7)
    accuracies = [np.mean((labels == predicted)[draws.integers(0, 50, 50)]) for _ in range(200)]
    assert (low, high) == pytest.approx(tuple(np.quantile(accuracies, [0.05, 0.95])), abs=1e-12)


def test_squad_interval_resamples_questions():
    context = "Ada was born in Paris in 1900."
    records = [{"id": "a", "title": "t", "context": context, "question": "Where?",
                "answers": {"text": ["Paris"], "answer_start": [16]}},
               {"id": "b", "title": "t", "context": context, "question": "When?",
                "answers": {"text": ["1900"], "answer_start": [25]}},
               {"id": "c", "title": "t", "context": context, "question": "Why?", "answers": {"text": [], "answer_start": []}}]
    saved = {"predictions": {"a": "in Paris", "b": "1900", "c": "Paris"}, "na_probs": {"a": 0.1, "b": 0.1, "c": 0.2}}
    f1 = np.array([2 * 0.5 * 1 / 1.5, 1.0, 0.0])  # "in Paris" vs "Paris": precision 1/2, recall 1
    low, high = tables.main_metric_ci(records, saved, CATALOG["squad_v2"], 300, 0.9, seed=3)
    draws = np.random.default_rng(3)
    means = [100 * f1[draws.integers(0, 3, 3)].mean() for _ in range(300)]
    assert (low, high) == pytest.approx(tuple(np.quantile(means, [0.05, 0.95])), abs=1e-9)


def chosen(seeds_full, seeds_lora, val_full, val_lora, drift_full, drift_lora):
    rows = [{"task": "sst2", "method": m, "seed": s, "val_main": v, "drift": d}
            for m, seeds, vals, drifts in (("full", seeds_full, val_full, drift_full),
                                           ("lora", seeds_lora, val_lora, drift_lora))
            for s, v, d in zip(seeds, vals, drifts)]
    frame = pd.DataFrame(rows)
    return frame[frame.method == "full"], frame[frame.method == "lora"]


def test_shared_seeds_are_paired_with_the_configured_confidence():
    full, lora = chosen([3, 1, 2], [1, 2, 3], [0.90, 0.80, 0.85], [0.79, 0.84, 0.88], [0.5, 0.4, 0.45], [0.3, 0.35, 0.2])
    row = verdicts.verdict_row("sst2", CATALOG["sst2"], full, lora, ANALYSIS)
    assert row["analysis"] == "paired by seed (n = 3)" and row["confidence"] == 0.9
    diff = np.array([0.79 - 0.80, 0.84 - 0.85, 0.88 - 0.90])  # seeds 1, 2, 3
    half = st.t.ppf(0.95, 2) * diff.std(ddof=1) / np.sqrt(3)
    assert row["method_minus_reference"] == pytest.approx(diff.mean())
    assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx((diff.mean() - half, diff.mean() + half))
    # H2, paired delta method: z_i = (lora_i - R full_i) / mean(full), R = mean(lora) / mean(full)
    f, g = np.array([0.4, 0.45, 0.5]), np.array([0.3, 0.35, 0.2])
    ratio = g.mean() / f.mean()
    z = (g - ratio * f) / f.mean()
    half = st.t.ppf(0.95, 2) * z.std(ddof=1) / np.sqrt(3)
    assert row["h2_drift_reduction"] == pytest.approx(1 - ratio)
    assert (row["h2_ci_low"], row["h2_ci_high"]) == pytest.approx((1 - ratio - half, 1 - ratio + half))
    assert row["h2_drift_metric"] == "linear_cka" and row["h2_pooling"] == "mean"


def test_other_seeds_are_compared_unpaired():
    full, lora = chosen([1, 2, 3], [4, 5, 6], [0.90, 0.80, 0.85], [0.79, 0.84, 0.88], [0.5, 0.4, 0.45], [0.3, 0.35, 0.2])
    row = verdicts.verdict_row("sst2", CATALOG["sst2"], full, lora, ANALYSIS, names=("full", "lora"))
    assert row["analysis"] == "unpaired (full n = 3, lora n = 3)"
    welch = st.ttest_ind([0.79, 0.84, 0.88], [0.90, 0.80, 0.85], equal_var=False)
    low, high = welch.confidence_interval(0.9)
    assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx((low, high))


OUTPUT_KEYS = ("runs", "drift", "run_drift", "best", "verdicts", "drift_by_layer", "summary", "latex", "weights", "stability",
               "baselines", "seed_floor", "forgetting", "out_of_task", "probe_transfer", "intruders")


def run_aggregate(tmp_path, names, analysis, planned=None, **paths) -> dict:
    """tables.aggregate over the files write_run wrote for `names`; returns the output paths."""
    outputs = {key: tmp_path / "out" / f"{key}.out" for key in OUTPUT_KEYS}
    tables.aggregate(metrics_paths=[tmp_path / f"{n}.metrics.json" for n in names],
                     predictions_paths=[tmp_path / f"{n}.predictions.json" for n in names],
                     train_log_paths=[tmp_path / f"{n}.train_log.csv" for n in names],
                     baseline_paths={"sst2": tmp_path / "sst2.baselines.json"},
                     validation_paths={"sst2": tmp_path / "validation.jsonl"},
                     drift_paths=[tmp_path / f"{n}.drift.csv" for n in names], weights_paths=[],
                     check_paths=[tmp_path / f"{n}.check.json" for n in names],
                     task_defs={"sst2": CATALOG["sst2"]}, analysis=analysis, outputs=outputs, planned=planned, **paths)
    return outputs



def write_run(root, task, method, seed, val, drift_values, metric, pooling, ok=True, status=None):
    run = {"task": task, "method": method, "lr": "1e-3", "batch_size": 4, "seed": seed}
    name = f"{task}-{method}-{seed}"
    io.write_json(root / f"{name}.metrics.json", {
        "task": task, "main_metric": "accuracy", "dev": {"accuracy": val}, "validation": {"accuracy": val, "f1": val},
        "meta": {"run": run, "stopped_early": False, "trainable_fraction": 0.5, "steps": 4,
                 **({"status": status, "diverged_at_step": 3, "divergence_reason": "non-finite gradient norm at step 3"}
                    if status == "diverged" else {})}})
    io.write_json(root / f"{name}.predictions.json", {"predictions": {"v0": 1, "v1": 0}})
    io.write_csv(root / f"{name}.train_log.csv", pd.DataFrame([
        {"step": 2, "loss": 0.7, "grad_norm": 1.0, "learning_rate": 1e-3, "grad_clipped_fraction": 0.0},
        {"step": 2, "eval_loss": 0.6, "eval_accuracy": val},
        {"step": 4, "loss": 0.6, "grad_norm": 1.1, "learning_rate": 5e-4, "grad_clipped_fraction": 0.5},
        {"step": 4, "eval_loss": 0.5, "eval_accuracy": val}]))
    rows = [{**run, "step": step, "layer": layer, "layer_name": f"block_{layer}", "pooling": p, "metric": m,
             "value": value if (m, p) == (metric, pooling) else 0.99}
            for step in (0, 4) for layer, value in enumerate(drift_values)
            for m in ("linear_cka", "cosine") for p in ("mean", "last")]
    io.write_csv(root / f"{name}.drift.csv", pd.DataFrame(rows))
    io.write_json(root / f"{name}.check.json", {
        "run": run, "passed": ok, "merge_max_abs_logit_diff": 1e-6 if method == "lora" else None,
        "failure": "" if ok else "base model + adapter: 3 predictions differ (e.g. ['v0'])",
        "checks": [{"check": "reloaded model" if method == "full" else "base model + adapter",
                    "prediction_mismatches": 0 if ok else 3, "passed": ok}]})
    return name


def write_baselines(root, trivial: float, probe: float):
    io.write_json(root / "sst2.baselines.json", {
        "task": "sst2", "main_metric": "accuracy", "kind": "classification",
        "trivial": {"name": "majority class", "answer": 1, "dev": {"accuracy": trivial},
                    "validation": {"accuracy": trivial}},
        "linear_probe": {"status": "ok", "reason": "", "dev": {"accuracy": probe}, "validation": {"accuracy": probe}}})


def test_aggregate_uses_the_configured_drift_and_shows_failed_checks(tmp_path):
    write_baselines(tmp_path, 0.5, 0.7)
    names = [write_run(tmp_path, "sst2", "full", seed, 0.9, [0.5, 0.7], "cosine", "last") for seed in (1, 2)]
    names += [write_run(tmp_path, "sst2", "lora", seed, 0.89, [0.8, 0.9], "cosine", "last", ok=seed == 1)
              for seed in (1, 2)]
    io.write_jsonl(tmp_path / "validation.jsonl", [{"id": "v0", "text": "a", "label": 1}, {"id": "v1", "text": "b", "label": 1}])
    analysis = {**ANALYSIS, "h2_metric": "cosine", "h2_pooling": "last"}
    outputs = run_aggregate(tmp_path, names, analysis)
    best = pd.read_csv(outputs["best"]).set_index("method")
    # drift = mean over layers of 1 - cosine ("last" pooling) at the last snapshot
    assert best.loc["full", "drift_mean"] == pytest.approx(1 - (0.5 + 0.7) / 2)
    assert best.loc["lora", "drift_mean"] == pytest.approx(1 - (0.8 + 0.9) / 2)
    verdicts = pd.read_csv(outputs["verdicts"])
    assert verdicts.loc[0, "h2_drift_reduction"] == pytest.approx(1 - 0.15 / 0.4)
    assert verdicts.loc[0, "analysis"] == "paired by seed (n = 2)"
    runs = pd.read_csv(outputs["runs"])
    assert runs.val_main_ci_low.notna().all() and list(runs.checkpoint_ok) == [True, True, True, False]
    summary = outputs["summary"].read_text()
    assert "🔴 FAILED: checkpoint validation" in summary
    assert "| sst2 | lora | 1e-3 | 4 | 2 | base model + adapter: 3 predictions differ (e.g. ['v0']) |" in summary
    assert "1 − cosine similarity" in summary and "last pooling" in summary


def test_predictions_missing_an_example_have_no_interval():
    """A tampered or truncated predictions.json must not stop the tables (its check fails instead)."""
    records = [{"id": f"e{i}", "text": "x", "label": i % 2} for i in range(4)]
    saved = {"predictions": {"e0": 0, "e1": 1, "e2": 0}}
    low, high = tables.main_metric_ci(records, saved, CATALOG["sst2"], 50, 0.9, seed=1)
    assert np.isnan(low) and np.isnan(high)


def test_diverged_runs_are_listed_but_left_out_and_missing_runs_are_marked(tmp_path):
    """Seed 3 of full fine-tuning diverged: it stays in runs.csv but not in the means or verdicts;
    the planned LoRA seed 3 has no outputs at all: runs.csv lists it as missing. LoRA seed 2 does
    not beat the trivial baseline (0.75 < 0.78): flagged."""
    write_baselines(tmp_path, 0.78, 0.7)
    names = [write_run(tmp_path, "sst2", "full", seed, val, [0.5, 0.7], "linear_cka", "mean",
                       status="diverged" if seed == 3 else None) for seed, val in ((1, 0.9), (2, 0.8), (3, 0.1))]
    names += [write_run(tmp_path, "sst2", "lora", seed, val, [0.8, 0.9], "linear_cka", "mean")
              for seed, val in ((1, 0.85), (2, 0.75))]
    io.write_jsonl(tmp_path / "validation.jsonl", [{"id": "v0", "text": "a", "label": 1}, {"id": "v1", "text": "b", "label": 1}])
    planned = [{"task": "sst2", "method": m, "lr": "1e-3", "batch_size": 4, "seed": s} for m in ("full", "lora")
               for s in (1, 2, 3)]
    outputs = run_aggregate(tmp_path, names, ANALYSIS, planned=planned)
    runs = pd.read_csv(outputs["runs"]).set_index(["method", "seed"])
    assert runs.loc[("full", 3), "status"] == "diverged" and runs.loc[("full", 3), "diverged_at_step"] == 3
    assert runs.loc[("lora", 3), "status"] == "missing" and len(runs) == 6
    best = pd.read_csv(outputs["best"]).set_index("method")
    assert best.loc["full", "n_seeds"] == 2 and best.loc["full", "n_diverged"] == 1
    assert best.loc["full", "val_mean"] == pytest.approx((0.9 + 0.8) / 2)
    verdicts = pd.read_csv(outputs["verdicts"])
    assert verdicts.loc[0, "analysis"] == "paired by seed (n = 2)"
    assert verdicts.loc[0, "method_minus_reference"] == pytest.approx(((0.85 - 0.9) + (0.75 - 0.8)) / 2)
    assert (verdicts.loc[0, "method"], verdicts.loc[0, "reference"]) == ("lora", "full")
    summary = outputs["summary"].read_text()
    assert "| sst2 | full | 1e-3 | 4 | 3 | diverged | non-finite gradient norm at step 3 |" in summary
    assert "| sst2 | lora | 1e-3 | 4 | 3 | missing |  |" in summary
    assert "FAILED" not in summary  # a missing run has no checkpoint to fail
    assert list(runs.beats_trivial.loc[[("full", 1), ("full", 2), ("lora", 1), ("lora", 2)]]) == [True, True, True, False]
    assert "| sst2 | lora | 1e-3 | 4 | 2 | 0.750 | 0.780 |" in summary  # the run below the trivial baseline
    assert best.loc["lora", "trivial_val"] == 0.78 and best.loc["lora", "probe_val"] == 0.7
    assert bool(best.loc["lora", "beats_trivial"])  # mean 0.8 > 0.78
    stability = pd.read_csv(outputs["stability"]).set_index("method")
    assert stability.loc["full", "n_runs"] == 3 and stability.loc["full", "n_diverged"] == 1
    assert stability.loc["full", "val_seed_std"] == pytest.approx(np.std([0.9, 0.8], ddof=1))
    baselines = pd.read_csv(outputs["baselines"]).set_index("baseline")
    assert baselines.loc["trivial", "val_main"] == 0.78 and baselines.loc["linear_probe", "dev_main"] == 0.7


@pytest.mark.parametrize("case", ["no finished run", "every run diverged"])
def test_tables_are_written_without_any_usable_run(tmp_path, case):
    """At a study's start (allow_missing_runs, nothing finished) or when every run diverged, the
    tables are written (runs listed as missing / diverged), with no chosen setting and no verdict."""
    write_baselines(tmp_path, 0.5, 0.7)
    names = [] if case == "no finished run" else [
        write_run(tmp_path, "sst2", m, 1, 0.1, [0.5], "linear_cka", "mean", status="diverged") for m in ("full", "lora")]
    io.write_jsonl(tmp_path / "validation.jsonl", [{"id": "v0", "text": "a", "label": 1}, {"id": "v1", "text": "b", "label": 1}])
    planned = [{"task": "sst2", "method": m, "lr": "1e-3", "batch_size": 4, "seed": 1} for m in ("full", "lora")]
    outputs = run_aggregate(tmp_path, names, ANALYSIS, planned=planned)
    runs = pd.read_csv(outputs["runs"])
    assert list(runs.status) == (["missing"] * 2 if case == "no finished run" else ["diverged"] * 2)
    assert pd.read_csv(outputs["best"]).empty and outputs["verdicts"].read_text().strip() == ""
    assert "| sst2 | full | 1e-3 | 4 | 1 |" in outputs["summary"].read_text()


def test_every_method_is_compared_with_the_reference_in_the_configured_order(tmp_path):
    """Reference dora_r8 (analysis.reference_method) and three other methods, two seeds each: one verdict
    row per compared method, in the configured order, each against the reference's own runs, one Holm
    family over the three."""
    write_baselines(tmp_path, 0.5, 0.7)
    drift = {"dora_r8": [0.5, 0.7], "full": [0.6, 0.6], "lora": [0.8, 0.9], "ia3": [0.95, 0.97]}
    val = {"dora_r8": 0.9, "full": 0.91, "lora": 0.88, "ia3": 0.8}
    names = [write_run(tmp_path, "sst2", m, seed, val[m] - 0.01 * seed, drift[m], "linear_cka", "mean")
             for m in drift for seed in (1, 2)]
    io.write_jsonl(tmp_path / "validation.jsonl", [{"id": f"v{i}", "text": "a", "label": 1} for i in (0, 1)])
    outputs = run_aggregate(tmp_path, names, {**ANALYSIS, "reference_method": "dora_r8"},
                            methods=["ia3", "dora_r8", "lora", "full"])
    table = pd.read_csv(outputs["verdicts"])
    assert list(table.method) == ["ia3", "lora", "full"] and set(table.reference) == {"dora_r8"}
    # the drift difference is the reference's mean drift minus the method's (1 - CKA, mean over layers)
    ref_drift = 1 - np.mean(drift["dora_r8"])
    for row in table.itertuples():
        assert row.h2_difference == pytest.approx(ref_drift - (1 - np.mean(drift[row.method])))
        assert row.method_minus_reference == pytest.approx(val[row.method] - val["dora_r8"])
        assert "across 3 comparisons" in row.h2_test or row.h2_test.startswith("no permutation")
    assert "## Each method vs the reference method (dora_r8)" in outputs["summary"].read_text()


def test_aggregate_starts_without_torch():
    """Rule aggregate reads CSV/JSON only: every module its code path imports loads without torch,
    transformers or peft (seconds of start-up per re-aggregation)."""
    import subprocess
    import sys

    code = ("import sys; from ftdrift.analysis import tables, uncertainty, verdicts, weight_tables, stability, "
            "forgetting, summary; heavy = {'torch', 'transformers', 'peft'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_run_drift_is_the_mean_over_layers_at_each_runs_last_snapshot():
    """run_drift.csv, per run x metric x pooling: mean over layers of 1 − similarity (distances as
    they are) at the run's own last snapshot, checked against a loop over the rows."""
    rng = np.random.default_rng(0)
    rows = [{"task": "sst2", "method": m, "lr": "1e-3", "batch_size": 4, "seed": seed, "step": step, "layer": layer,
             "layer_name": f"block_{layer}", "pooling": p, "metric": metric, "value": rng.uniform(0.2, 0.9)}
            for m, last in (("full", 8), ("lora", 6)) for seed in (1, 2) for step in range(0, last + 1, 2)
            for layer in range(3) for p in ("mean", "last") for metric in ("linear_cka", "procrustes")]
    drift = pd.DataFrame(rows)
    table = tables.run_drift_table(drift)
    assert len(table) == 2 * 2 * 2 * 2
    for row in table.itertuples():
        values = [r["value"] for r in rows if (r["method"], r["seed"], r["metric"], r["pooling"]) ==
                  (row.method, row.seed, row.metric, row.pooling) and r["step"] == (8 if row.method == "full" else 6)]
        assert row.step == (8 if row.method == "full" else 6) and len(values) == 3
        expected = np.mean(values) if row.metric == "procrustes" else 1 - np.mean(values)
        assert row.drift == pytest.approx(expected)
    assert list(tables.run_drift_table(drift.iloc[:0]).columns) == list(table.columns)
