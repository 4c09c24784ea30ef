"""Report figures, tables and pages (ftdrift.report) on synthetic tables with the workflow's schemas."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ftdrift.analysis.tables import run_drift_table
from ftdrift.report import drift, html, overview, performance, style, training, weights
from ftdrift.report import frames as report_frames
from ftdrift.report import labels as report_labels
from ftdrift.study.grid import RUN_KEYS, SETTING_KEYS

TASKS = {"sst2": "accuracy", "mrpc": "f1", "squad_v2": "f1"}
LRS = {"full": ["1e-5", "3e-5"], "lora": ["1e-4", "3e-4"]}
BATCH_SIZES = [16, 32]
SEEDS = [1, 2, 3]
STEPS = [0, 50, 100, 150]
LAYERS = ["embeddings"] + [f"model.layers.{i}" for i in range(6)]
EARLY = ("sst2", "lora", "3e-4", 16, 2)  # stopped early at step 100; part of the chosen setting


def planned_runs() -> list[dict]:
    return [{"task": t, "method": m, "lr": lr, "batch_size": bs, "seed": s}
            for t in TASKS for m in ("full", "lora") for lr in LRS[m] for bs in BATCH_SIZES for s in SEEDS]


def synthetic_results(root: Path, missing: tuple | None = None) -> dict[str, Path]:
    """runs.csv, drift.csv, best.csv, summary.md, weights.csv and train logs under `root`.

    One run stopped early (EARLY); `missing` (a run key) is left out of every table, as if it failed.
    """
    rng = np.random.default_rng(0)
    tables = root / "results" / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    runs, drift_rows, weight_rows = [], [], []
    for run in planned_runs():
        key = tuple(run.values())
        if missing and key == tuple(missing):
            continue
        task, method, lr, bs, seed = key
        metric = TASKS[task]
        early = key == EARLY
        last = 100 if early else 150
        quality = (0.80 + (0.03 if method == "full" else 0.0) + 0.03 * LRS[method].index(lr) + (0.03 if bs == 16 else 0.0)
                   + rng.normal(0, 0.005))
        scale = 100.0 if task == "squad_v2" else 1.0
        row = {"task": task, "method": method, "lr": lr, "batch_size": bs, "seed": seed,
               "status": "stopped_early" if early else "completed", "main_metric": metric,
               "dev_main": scale * (quality + rng.normal(0, 0.01)), "val_main": scale * quality,
               "val_main_ci_low": scale * (quality - 0.02), "val_main_ci_high": scale * (quality + 0.02),
               f"dev_{metric}": scale * quality, f"val_{metric}": scale * quality,
               "steps": last, "best_step": last - 50, "best_dev_loss": 0.4, "trainable_params": 1000 if method == "lora"
               else 100000, "total_params": 100000, "trainable_fraction": 0.01 if method == "lora" else 1.0,
               "train_seconds": 60.0, "micro_batch": bs, "accumulation": 1, "precision": "fp32", "attempts": 1,
               "checkpoint_ok": True, "reload_prediction_mismatches": 0,
               "merge_max_abs_logit_diff": 1e-6 if method == "lora" else np.nan, "merge_ok": method == "lora" or None}
        if task == "squad_v2":
            row.update({"val_exact": scale * (quality - 0.05), "val_HasAns_f1": scale * (quality - 0.1),
                        "val_NoAns_f1": scale * (quality + 0.05), "val_HasAns_exact": scale * (quality - 0.15),
                        "val_NoAns_exact": scale * (quality + 0.05), "val_best_f1": scale * (quality + 0.01)})
        else:
            row["val_accuracy"] = quality
        runs.append(row)
        amount = (0.3 if method == "full" else 0.1) * (1 + 0.2 * LRS[method].index(lr))
        for step in [s for s in STEPS if s <= last]:
            for layer, name in enumerate(LAYERS):
                for pooling in ("mean", "last"):
                    d = amount * (step / 150) * (0.2 + layer / len(LAYERS)) + abs(rng.normal(0, 0.005)) * (step > 0)
                    if method == "lora" and layer == 0:
                        d = 0.0
                    for metric_name, value in (("linear_cka", 1 - d), ("cosine", 1 - d / 2)):
                        drift_rows.append({"task": task, "method": method, "lr": lr, "batch_size": bs, "seed": seed,
                                           "step": step, "layer": layer, "layer_name": name, "pooling": pooling,
                                           "metric": metric_name, "value": value})
        for layer in range(1, len(LAYERS)):
            for module in ("q_proj", "v_proj"):
                weight_rows.append({"task": task, "method": method, "lr": lr, "batch_size": bs, "seed": seed,
                                     "module": module, "layer": layer - 1,
                                     "effective_rank": (60 + rng.normal(0, 3)) if method == "full"
                                     else 3.5 + rng.random(),
                                     "stable_rank": 5.0 if method == "full" else 1.5,
                                     "intruder_dims": 0 if method == "full" else int(rng.integers(0, 4))})
        log = root / "results" / "runs" / task / method / f"lr{lr}_bs{bs}_seed{seed}" / "train_log.csv"
        log.parent.mkdir(parents=True, exist_ok=True)
        write_train_log(log, last, metric, rng)
    runs_df = pd.DataFrame(runs)
    runs_df.to_csv(tables / "runs.csv", index=False)
    pd.DataFrame(drift_rows).to_csv(tables / "drift.csv", index=False)
    run_drift_table(pd.DataFrame(drift_rows)).to_csv(tables / "run_drift.csv", index=False)
    pd.DataFrame(weight_rows).to_csv(tables / "weights.csv", index=False)
    dev = runs_df.groupby(SETTING_KEYS, as_index=False)["dev_main"].mean()
    best_keys = dev.loc[dev.groupby(["task", "method"])["dev_main"].idxmax(), SETTING_KEYS]
    best = []
    for _, b in best_keys.iterrows():
        g = runs_df.merge(b.to_frame().T.astype({"batch_size": int}), on=SETTING_KEYS)
        best.append({**b.to_dict(), "main_metric": g.main_metric.iloc[0], "n_seeds": len(g),
                     "val_mean": g.val_main.mean(), "val_std": g.val_main.std(), "val_ci_low": g.val_main.mean() - 0.02,
                     "val_ci_high": g.val_main.mean() + 0.02, "dev_mean": g.dev_main.mean(), "drift_mean": 0.1,
                     "drift_ci_low": 0.08, "drift_ci_high": 0.12, "trainable_fraction": g.trainable_fraction.mean()})
    pd.DataFrame(best).to_csv(tables / "best.csv", index=False)
    (tables / "summary.md").write_text(
        "# ftdrift summary\n\nBest hyperparameters per task and method.\n\n"
        "| task | method | lr | batch | metric | seeds | validation mean ± std | CI | drift |\n"
        "|---|---|---|---|---|---|---|---|---|\n| sst2 | full | 3e-5 | 16 | accuracy | 3 | 0.84 ± 0.01 | [0.82, 0.86] | 0.1 |\n"
        "\n## Each method vs the reference method (full)\n\n"
        "| task | metric | method − reference | CI | H1 (accuracy within tolerance) | H2 (drifts less) |\n"
        "|---|---|---|---|---|---|\n"
        "| sst2 | accuracy | -0.030 | [-0.05, -0.01] | not supported (drop 0.036) | supported (reduction 0.660) |\n"
        "| mrpc | f1 | -0.010 | [-0.03, 0.01] | supported (drop 0.012) | supported (reduction 0.650) |\n"
        "| squad_v2 | f1 | -1.000 | [-3.0, 1.0] | inconclusive (drop 0.020) | supported (reduction 0.600) |\n")
    verdicts = [("sst2", "accuracy", -0.03, -0.05, -0.01, 0.036, "not supported", 0.66, "supported"),
                ("mrpc", "f1", -0.01, -0.03, 0.01, 0.012, "supported", 0.65, "supported"),
                ("squad_v2", "f1", -1.0, -3.0, 1.0, 0.02, "inconclusive", 0.6, "supported")]
    columns = ["task", "metric", "method_minus_reference", "diff_ci_low", "diff_ci_high", "h1_relative_drop",
               "h1_verdict", "h2_drift_reduction", "h2_verdict"]
    pd.DataFrame(verdicts, columns=columns).assign(method="lora", reference="full", analysis="paired by seed (n = 3)") \
        .to_csv(tables / "verdicts.csv", index=False)
    return {name: tables / f"{name}.csv" for name in ("runs", "drift", "run_drift", "best", "weights", "verdicts")} | \
        {"summary": tables / "summary.md", "root": root}


def write_train_log(path: Path, last: int, metric: str, rng) -> None:
    rows = []
    for step in range(10, last + 1, 10):
        gn = 2.0 * math.exp(-step / 100) + 0.1
        rows.append({"step": step, "epoch": step / 150, "loss": 0.7 * math.exp(-step / 80) + 0.2 + rng.normal(0, 0.01),
                     "grad_norm": gn, "learning_rate": 3e-5 * (1 - step / 150),
                     "grad_norm_param_mean": gn / 10, "grad_norm_param_std": gn / 20, "grad_norm_param_min": gn / 100,
                     "grad_norm_param_max": gn / 2, "grad_clipped_fraction": 0.1 if step < 50 else 0.0,
                     "examples_per_second": 30 + rng.normal(0, 1), "tokens_per_second": 3000 + rng.normal(0, 50),
                     "cpu_rss_mb": 2000 + step, "gpu0_allocated_mb": 5000.0, "gpu0_reserved_mb": 6000.0})
        if step % 50 == 0:
            rows.append({"step": step, "epoch": step / 150, "eval_loss": 0.5 * math.exp(-step / 100) + 0.3,
                         f"eval_{metric}": 0.6 + step / 600, "eval_runtime": 1.0})
    pd.DataFrame(rows).to_csv(path, index=False)


METHODS = {"full": {}, "lora": {"peft": {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": "qv"}}}


@pytest.fixture
def methods(monkeypatch):
    """The report's methods as a report rule configures them (frames.configure_methods), undone after the test."""
    for attr in ("order", "labels", "reference", "adapters"):
        monkeypatch.setattr(report_frames._Methods, attr, getattr(report_frames._Methods, attr))
    report_frames.configure_methods({"methods": METHODS, "analysis": {"reference_method": "full"}})
    return METHODS


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_results(tmp_path_factory.mktemp("synthetic"), missing=("mrpc", "full", "3e-5", 32, 3))


@pytest.fixture(scope="module")
def frames(synthetic):
    return {name: report_frames.read_table(synthetic[name]) for name in ("runs", "drift", "run_drift", "best", "weights")}


SVG_NS = "{http://www.w3.org/2000/svg}"


def svg_root(path: Path) -> ET.Element:
    assert path.exists() and path.stat().st_size > 0, path
    root = ET.parse(path).getroot()  # well-formed XML or this raises
    assert root.tag == f"{SVG_NS}svg", root.tag
    return root


def svg_text(path: Path) -> str:
    """Every string drawn in the figure (<text> elements; comments when text is drawn as paths)."""
    root = svg_root(path)
    texts = ["".join(el.itertext()) for el in root.iter(f"{SVG_NS}text")]
    return " ".join(texts + re.findall(r"<!-- (.*?) -->", path.read_text(), flags=re.S))


# ---------------------------------------------------------------------------- tables


def test_read_table_normalises_keys(synthetic):
    runs = report_frames.read_table(synthetic["runs"])
    assert set(runs.lr) == {"1e-5", "3e-5", "1e-4", "3e-4"}  # not floats, not '1e-05'
    assert runs.seed.dtype.kind == "i" and runs.batch_size.dtype.kind == "i"
    assert report_frames.read_table(synthetic["root"] / "nope.csv", required=False) is None


@pytest.mark.parametrize("raw, expected", [(0.0001, "1e-4"), ("1e-04", "1e-4"), ("3e-5", "3e-5"), (2.5e-5, "2.5e-5")])
def test_lr_text(raw, expected):
    assert report_frames.lr_text(raw) == expected


def test_run_status_marks_missing_and_stopped(frames):
    status = report_frames.run_status(frames["runs"], planned_runs())
    assert len(status) == len(planned_runs())
    by_key = {tuple(r[k] for k in RUN_KEYS): r.status for _, r in status.iterrows()}
    assert by_key[("mrpc", "full", "3e-5", 32, 3)] == "missing"
    assert by_key[EARLY] == "stopped_early"
    assert (status.status == "completed").sum() == len(planned_runs()) - 2


def test_performance_and_grid_tables(frames):
    table = performance.performance_table(frames["runs"], frames["best"])
    assert len(table) == len(TASKS) * 2
    assert {"seeds_completed", "seeds_stopped_early", "val_mean", "val_ci_low"} <= set(table.columns)
    grid = performance.grid_table(frames["runs"], frames["best"])
    assert grid.chosen.sum() == len(TASKS) * 2
    assert len(grid) == len(TASKS) * 2 * 2 * len(BATCH_SIZES)
    early = grid[(grid.task == "sst2") & (grid.method == "lora") & (grid.lr == "3e-4") & (grid.batch_size == 16)]
    assert early.seeds_stopped_early.iloc[0] == 1


def test_verdicts_and_headline(synthetic, frames):
    verdicts = report_frames.read_table(synthetic["verdicts"])
    assert list(verdicts.task) == ["sst2", "mrpc", "squad_v2"]
    assert list(verdicts.h1_verdict) == ["not supported", "supported", "inconclusive"]
    assert set(verdicts.h2_verdict) == {"supported"}
    status = report_frames.run_status(frames["runs"], planned_runs())
    head = overview.headline(status, verdicts)
    assert head["runs"].startswith(f"{len(planned_runs()) - 1} of {len(planned_runs())} finished (1 stopped early)")
    assert "1 failed or missing" in head["runs"]
    assert head["H1"] == "1 supported, 1 not supported, 1 inconclusive (3 comparisons)"
    assert head["H2"] == "3 supported (3 comparisons)"
    assert all(isinstance(v, str) for v in head.values())
    assert overview.headline(status, pd.DataFrame())["H1"] == "no verdict yet"


def test_markdown_html_tables():
    out = html.markdown_html("# T\n\ntext **b**\n\n| a | b |\n|---|---|\n| 1 | <x> |\n")
    assert "<h2>T</h2>" in out and "<strong>b</strong>" in out and "<td>&lt;x&gt;</td>" in out and "<th>a</th>" in out


def test_overview_shows_summary_tables(synthetic, tmp_path):
    """summary.md's tables reach the Overview page as HTML tables (markdown-it's table plugin)."""
    out = {"page": tmp_path / "overview.html", "headline": tmp_path / "headline.json"}
    overview.write_overview(runs=synthetic["runs"], best=synthetic["best"], verdicts=synthetic["verdicts"],
                            summary=synthetic["summary"], study={}, planned=planned_runs(), outputs=out)
    summary = out["page"].read_text().split("<h2>summary.md</h2>")[1]
    assert summary.count("<table>") == 2 and "|---|" not in summary
    assert "<h2>ftdrift summary</h2>" in summary and "<h3>Each method vs the reference method (full)</h3>" in summary
    assert "<th>H1 (accuracy within tolerance)</th>" in summary
    assert "<td>not supported (drop 0.036)</td>" in summary and "<td>0.84 ± 0.01</td>" in summary


# ---------------------------------------------------------------------------- report labels


def renders(labels: list[dict]) -> bool:
    """The report's rule: no toggle, several (then all are dropped), or one every row can flip."""
    keys = list(labels[0])
    candidates = report_labels._toggle_candidates(labels, keys)
    return len(candidates) != 1 or report_labels._toggle_safe(labels, keys, candidates[0])


def test_safe_labels_string_values_and_no_dangling_toggle():
    # method has two values on exactly half the entries, but full and LoRA use different lrs:
    # as a toggle the report would look up "LoRA at a full-fine-tuning lr" and crash the page
    records = [{"task": "sst2", "method": m, "lr": lr, "seed": 1} for m in ("full", "lora") for lr in LRS[m]]
    assert not renders([{k: str(v) for k, v in r.items()} for r in records])
    labels = report_labels.safe_labels(records)
    assert renders(labels)
    assert list(labels[0]) == ["method", "task", "lr", "seed"]  # moved first: the first label never toggles
    assert all(isinstance(v, str) for r in labels for v in r.values())
    # a complete product (pooling for every task x metric) keeps its toggle and its order
    product = [{"task": t, "metric": "linear_cka", "pooling": p} for t in ("a", "b", "c") for p in ("mean", "last")]
    assert report_labels.safe_labels(product) == product and renders(product)


def test_run_labels_cover_every_planned_run(frames):
    labels = report_labels.run_labels(planned_runs(), frames["runs"])
    assert len(labels) == len(planned_runs())
    assert labels["sst2/lora/lr3e-4_bs16_seed2"]["status"] == "stopped early"
    assert labels["mrpc/full/lr3e-5_bs32_seed3"]["status"] == "missing (failed or not run)"
    rows = {tuple(v.values()) for v in labels.values()}
    assert len(rows) == len(labels)  # unique rows: no entry hides another
    assert renders(list(labels.values()))


def test_run_entry_labels_reads_runs_csv_once(synthetic):
    from types import SimpleNamespace

    wildcards = SimpleNamespace(task="sst2", method="lora", lr="3e-4", batch_size="16", seed="2")
    labels = report_labels.run_entry_labels(planned_runs(), synthetic["runs"], wildcards)
    assert labels == {"task": "sst2", "method": "lora", "lr": "3e-4", "batch size": "16", "seed": "2",
                      "status": "stopped early"}
    stranger = SimpleNamespace(task="sst2", method="lora", lr="9e-9", batch_size="16", seed="2")
    stranger_labels = report_labels.run_entry_labels(planned_runs(), synthetic["runs"], stranger)
    assert stranger_labels["status"] == "not in the current grid"


# ---------------------------------------------------------------------------- figures


def test_validation_plot_marks_stopped_early(frames, tmp_path):
    path = tmp_path / "validation.svg"
    performance.plot_validation(frames["runs"], frames["best"], path, list(TASKS))
    svg_root(path)
    text = svg_text(path)
    assert "stopped early" in text  # legend entry for the hollow marker
    for task in TASKS:
        assert task in text


def test_performance_figures_show_every_configured_method_in_order(frames, tmp_path, monkeypatch):
    """A third configured method without runs gets its own column / panel, after the reference and lora."""
    for attr in ("order", "labels", "reference", "adapters"):
        monkeypatch.setattr(report_frames._Methods, attr, getattr(report_frames._Methods, attr))
    dora = {"peft": {"peft_type": "LORA", "use_dora": True}}
    report_frames.configure_methods({"methods": {**METHODS, "dora_r8": dora}, "analysis": {"reference_method": "full"}})
    assert performance._methods(frames["runs"], frames["best"]) == ["full", "lora", "dora_r8"]
    performance.plot_validation(frames["runs"], frames["best"], tmp_path / "v.svg", ["sst2"])
    text = svg_text(tmp_path / "v.svg")
    assert text.index("full") < text.index("lora") < text.index("dora_r8") and "dora_r8 (no runs)" in text
    performance.plot_grid(frames["runs"], frames["best"], "sst2", tmp_path / "g.svg")
    assert "no runs" in svg_text(tmp_path / "g.svg")
    table = performance.plot_qa_breakdown(frames["runs"], frames["best"], "squad_v2", tmp_path / "qa.svg")
    assert set(table.method) == {"full", "lora"}


def test_grid_plot_marks_chosen(frames, tmp_path):
    path = tmp_path / "grid.svg"
    performance.plot_grid(frames["runs"], frames["best"], "sst2", path)
    svg_root(path)
    text = svg_text(path)
    assert "chosen" in text and "peak learning rate" in text and "dev accuracy" in text


def test_qa_breakdown(frames, tmp_path):
    table = performance.plot_qa_breakdown(frames["runs"], frames["best"], "squad_v2", tmp_path / "qa.svg")
    svg_root(tmp_path / "qa.svg")
    assert {"HasAns_f1", "NoAns_f1", "f1"} <= set(table.score)
    assert "(%)" in svg_text(tmp_path / "qa.svg")  # SQuAD scores are 0-100


def test_heatmaps_share_one_colour_scale(frames, tmp_path, monkeypatch):
    seen = []
    real = drift.plt.Axes.imshow

    def spy(self, *args, **kwargs):
        image = real(self, *args, **kwargs)
        seen.append(image)
        return image

    monkeypatch.setattr(drift.plt.Axes, "imshow", spy)
    path = tmp_path / "heat.svg"
    vmin, vmax = drift.plot_drift_heatmaps(frames["drift"], frames["runs"], frames["best"], "sst2", "linear_cka",
                                          "mean", path)
    svg_root(path)
    assert len(seen) == 2  # full and LoRA
    assert all(im.norm is seen[0].norm for im in seen)  # literally one Normalize
    assert {(im.norm.vmin, im.norm.vmax) for im in seen} == {(vmin, vmax)}
    mats = drift.heatmap_matrices(frames["drift"], frames["best"], "sst2", "linear_cka", "mean")
    data = np.concatenate([m.to_numpy().ravel() for m in mats.values()])
    data = data[np.isfinite(data)]
    assert math.isclose(vmin, data.min()) and math.isclose(vmax, data.max())
    assert "n=3 seeds, 1 stopped early" in svg_text(path)  # EARLY belongs to the chosen LoRA setting


def test_shared_limits_flat_and_empty():
    lo, hi = style.shared_limits([pd.DataFrame([[1.0, 1.0]]), pd.DataFrame([[1.0]])])
    assert lo < 1.0 < hi
    assert style.shared_limits([]) == (0.0, 1.0)


def test_drift_figures(frames, tmp_path):
    for func in (drift.plot_drift_by_layer, drift.plot_drift_over_training, drift.plot_metric_vs_drift):
        path = tmp_path / f"{func.__name__}.svg"
        table = frames["run_drift" if func is drift.plot_metric_vs_drift else "drift"]
        func(table, frames["runs"], frames["best"], "mrpc", "linear_cka", "last", path)
        svg_root(path)
        assert "drift = 1 − linear CKA" in svg_text(path)
    assert drift.pick_layers([0, 1, 2, 3, 4, 5, 6]) == [1, 4, 6]
    assert drift.pick_layers([0]) == [0]


def test_metric_vs_drift_marks_stopped_early(frames, tmp_path):
    path = tmp_path / "scatter.svg"
    drift.plot_metric_vs_drift(frames["run_drift"], frames["runs"], frames["best"], "sst2", "linear_cka", "mean", path)
    assert "stopped early" in svg_text(path)


def test_drift_by_layer_table(frames):
    table = drift.layer_drift_table(frames["drift"], frames["runs"], frames["best"], "sst2")
    assert set(table.metric) == {"linear_cka", "cosine"} and set(table.pooling) == {"mean", "last"}
    lora_emb = table[(table.method == "lora") & (table.layer == 0) & (table.metric == "linear_cka")]
    assert np.allclose(lora_emb.drift_mean, 0.0)


def test_weight_figures_and_absence(frames, tmp_path):
    weights.plot_weight_by_layer(frames["weights"], frames["best"], "sst2", "effective_rank", tmp_path / "r.svg",
                                 {"lora": 8})
    weights.plot_weight_by_layer(frames["weights"], frames["best"], "sst2", "intruder_dims", tmp_path / "i.svg")
    text = svg_text(tmp_path / "r.svg")
    assert "q_proj" in text and "lora: rank r = 8" in text and "effective rank" in text
    svg_root(tmp_path / "i.svg")
    # weights.csv not produced yet: a placeholder that says so, no exception
    weights.plot_weight_by_layer(None, frames["best"], "sst2", "effective_rank", tmp_path / "none.svg")
    assert "weights.csv" in svg_text(tmp_path / "none.svg")


def test_run_diagnostics_mark_stopped_early(synthetic, frames, tmp_path):
    task, method, lr, bs, seed = EARLY
    log = training.read_train_log(synthetic["root"] / "results/runs" / task / method / f"lr{lr}_bs{bs}_seed{seed}" /
                               "train_log.csv")
    run = dict(zip(RUN_KEYS, EARLY))
    info = frames["runs"].set_index(RUN_KEYS).loc[EARLY].to_dict() | {"status": "stopped_early"}
    path = tmp_path / "run.svg"
    training.plot_run_diagnostics(log, run, info, path, "accuracy")
    svg_root(path)
    text = svg_text(path)
    assert "STOPPED EARLY after 100 steps" in text and "stopped early here" in text
    for expected in ("cross-entropy loss (nats)", "accuracy (main)", "gradient L2 norm", "learning rate",
                     "examples / second", "tokens / second", "memory (MB)", "gpu0 allocated"):
        assert expected in text, expected
    # an absent log still yields a page that says what is missing
    training.plot_run_diagnostics(pd.DataFrame(), run, {"status": "missing"}, tmp_path / "none.svg")
    text = svg_text(tmp_path / "none.svg")
    assert "no training log" in text and "MISSING" in text


def test_empty_inputs_do_not_crash(tmp_path):
    empty = pd.DataFrame(columns=RUN_KEYS)
    performance.plot_validation(empty, pd.DataFrame(), tmp_path / "v.svg")
    performance.plot_grid(empty, None, "sst2", tmp_path / "g.svg")
    drift.plot_drift_by_layer(pd.DataFrame(), None, None, "sst2", "linear_cka", "mean", tmp_path / "d.svg")
    for name in ("v", "g", "d"):
        svg_root(tmp_path / f"{name}.svg")


# ---------------------------------------------------------------------------- rule entry points


def test_rule_outputs_write_everything(synthetic, tmp_path, methods):
    study = {"model": {"name_or_path": "tiny", "family": "llama"}, "tasks": list(TASKS),
             "task_defs": {t: {"type": "extractive_qa" if t == "squad_v2" else "single_sentence", "main_metric": m}
                           for t, m in TASKS.items()},
             "grid": {"learning_rates": {"full": {"classification": [1e-5]}, "lora": {"classification": [1e-4]}},
                      "batch_sizes": BATCH_SIZES, "seeds": SEEDS},
             "methods": METHODS, "analysis": {"h1_max_relative_drop": 0.03, "h2_min_drift_reduction": 0.2}}
    tables = {k: str(synthetic[k]) for k in ("runs", "best", "drift", "run_drift", "summary", "weights", "verdicts")}
    out = tmp_path / "report"
    overview.write_overview(runs=tables["runs"], best=tables["best"], verdicts=tables["verdicts"],
                            summary=tables["summary"], study=study, planned=planned_runs(),
                            outputs={"page": out / "overview.html", "headline": out / "headline.json"})
    page = (out / "overview.html").read_text()
    assert "stopped early" in page and "missing" in page and "not supported" in page and "http" not in page
    head = report_labels.read_headline(out / "headline.json")
    assert list(head) == ["page", "runs", "checks", "H1", "H2"]  # the report's label columns, in this order
    assert "1 not supported" in head["H1"]
    n_runs = len(pd.read_csv(synthetic["runs"]))
    assert head["checks"] == f"{n_runs} of {n_runs} runs reproduce their saved predictions and metrics " \
                             "(merged adapters too)"
    assert "<td>lora (LORA r=8 (qv))</td>" in page  # the setup's methods table: name and description
    assert 'class="kpi alarm"' not in page
    perf = {"validation": out / "p/validation.svg", "table_csv": out / "p/table.csv", "table_html": out / "p/table.html",
            "grid_csv": out / "p/grid.csv", "grid": out / "p/grid", "qa": out / "p/qa", "qa_csv": out / "p/qa.csv"}
    performance.write_performance(runs=tables["runs"], best=tables["best"], tasks=list(TASKS), qa_tasks=["squad_v2"],
                                  confidence=0.95, outputs=perf)
    assert sorted(p.name for p in (out / "p/grid").iterdir()) == sorted(f"{t}.svg" for t in TASKS)
    assert [p.name for p in (out / "p/qa").iterdir()] == ["squad_v2.svg"]
    drift_out = {k: out / "d" / k for k in ("heatmaps", "by_layer", "over_training", "vs_metric")}
    drift_out["table"] = out / "d/table.csv"
    drift.write_drift(drift=tables["drift"], run_drift=tables["run_drift"], runs=tables["runs"], best=tables["best"],
                      task="sst2", outputs=drift_out)
    for key in ("heatmaps", "by_layer", "over_training", "vs_metric"):
        assert sorted(str(p.relative_to(drift_out[key])) for p in drift_out[key].rglob("*.svg")) == [
            "cosine/last.svg", "cosine/mean.svg", "linear_cka/last.svg", "linear_cka/mean.svg"]
    w_out = {"effective_rank": out / "w/rank", "intruders": out / "w/intr", "table": out / "w/table.csv"}
    weights.write_weights(weights=tables["weights"], best=tables["best"], tasks=list(TASKS), ranks={"lora": 8},
                          outputs=w_out)
    assert len(list((out / "w/rank").glob("*.svg"))) == len(TASKS)
    weights.write_weights(weights=str(tmp_path / "absent.csv"), best=tables["best"], tasks=["sst2"], outputs=w_out)
    assert (out / "w/rank/sst2.svg").exists()
    runs = [r for r in planned_runs() if r["task"] == "mrpc" and r["seed"] == 3 and r["batch_size"] == 32]
    logs = [str(synthetic["root"] / "results/runs" / r["task"] / r["method"] /
                f"lr{r['lr']}_bs{r['batch_size']}_seed{r['seed']}" / "train_log.csv") for r in runs]
    t_out = {"runs": out / "t/runs", "all_runs": out / "t/all.svg"}
    training.write_training(runs=tables["runs"], logs=logs, task="mrpc", planned=runs, main_metric="f1", outputs=t_out)
    assert len(list((out / "t/runs").rglob("*.svg"))) == len(runs)
    missing = out / "t/runs/full/lr3e-5_bs32_seed3.svg"  # the run without a log still gets a page
    assert "MISSING" in svg_text(missing)
    svg_root(out / "t/all.svg")


def test_pages_name_the_configured_drift_metric(synthetic, tmp_path):
    """best.csv's drift is on analysis.h2_metric: the pages say which (core.drift_metrics' names)."""
    default, _ = overview.overview_page(None, None, None, None, {}, None)
    assert "Drift of a layer = 1 − linear CKA between" in default
    page, _ = overview.overview_page(None, None, None, None, {"analysis": {"h2_metric": "procrustes"}}, None)
    assert "Drift of a layer = Procrustes distance between" in page and "CKA" not in page
    out = {"validation": tmp_path / "v.svg", "table_csv": tmp_path / "t.csv", "table_html": tmp_path / "t.html",
           "grid_csv": tmp_path / "g.csv", "grid": tmp_path / "grid"}
    performance.write_performance(runs=synthetic["runs"], best=synthetic["best"], tasks=["sst2"],
                                  drift_metric="cosine", outputs=out)
    assert "drift = mean over layers of 1 − cosine similarity at the final snapshot" in out["table_html"].read_text()


def test_failed_checkpoint_validation_is_a_red_line_on_the_overview(synthetic, tmp_path):
    runs = pd.read_csv(synthetic["runs"])
    runs.loc[runs.index[:2], "checkpoint_ok"] = False
    runs.to_csv(tmp_path / "runs.csv", index=False)
    study = {"model": {"name_or_path": "tiny", "family": "llama"}, "tasks": list(TASKS), "analysis": {}}
    out = tmp_path / "report"
    overview.write_overview(runs=str(tmp_path / "runs.csv"), best=str(synthetic["best"]),
                            verdicts=str(synthetic["verdicts"]), summary=str(synthetic["summary"]), study=study,
                            planned=planned_runs(), outputs={"page": out / "overview.html",
                                                             "headline": out / "headline.json"})
    page = (out / "overview.html").read_text()
    assert f'<div class="kpi alarm">Checkpoint validation<b>FAILED for 2 of {len(runs)} runs' in page
    assert report_labels.read_headline(out / "headline.json")["checks"].startswith("FAILED for 2 of")
