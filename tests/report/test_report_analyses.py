"""The report of the seed floor, a method's similarity to the reference method, forgetting and the H2 test
(ftdrift.report), on small synthetic tables with the producers' schemas; plotted values checked against hand computations."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes

from ftdrift.analysis.tables import run_drift_table
from ftdrift.report import drift, forgetting, overview, similarity
from ftdrift.report.frames import read_table
from ftdrift.study.grid import RUN_KEYS

SVG_NS = "{http://www.w3.org/2000/svg}"
TASK = "sst2"
SETTING = {"full": ("3e-5", 16), "lora": ("3e-4", 16)}
LAYERS = ["embeddings", "encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]
STEPS = [0, 50, 100]


def svg_text(path: Path) -> str:
    """Every string drawn in the figure (well-formed SVG or this raises)."""
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG_NS}svg"
    return " ".join("".join(el.itertext()) for el in root.iter(f"{SVG_NS}text"))


@pytest.fixture
def plotted(monkeypatch):
    """Every Line2D drawn through Axes.plot and every array through Axes.imshow, while the test runs."""
    seen = {"lines": [], "images": []}
    plot, imshow = Axes.plot, Axes.imshow

    def plot_spy(self, *args, **kwargs):
        lines = plot(self, *args, **kwargs)
        seen["lines"].extend(lines)
        return lines

    def imshow_spy(self, data, *args, **kwargs):
        seen["images"].append(np.ma.filled(np.ma.asarray(data, dtype=float), np.nan))
        return imshow(self, data, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", plot_spy)
    monkeypatch.setattr(Axes, "imshow", imshow_spy)
    return seen


def _runs(seeds=(1, 2), diverged=()) -> pd.DataFrame:
    rows = []
    for method, (lr, bs) in SETTING.items():
        for seed in seeds:
            status = "diverged" if (method, seed) in diverged else "completed"
            rows.append({"task": TASK, "method": method, "lr": lr, "batch_size": bs, "seed": seed, "status": status,
                         "val_main": 0.9, "main_metric": "accuracy"})
    return pd.DataFrame(rows)


def _best() -> pd.DataFrame:
    return pd.DataFrame([{"task": TASK, "method": m, "lr": lr, "batch_size": bs, "main_metric": "accuracy"}
                         for m, (lr, bs) in SETTING.items()])


def _drift(seeds=(1, 2)) -> pd.DataFrame:
    rows = []
    for method, (lr, bs) in SETTING.items():
        for seed in seeds:
            for step in STEPS:
                for layer, name in enumerate(LAYERS):
                    d = (0.3 if method == "full" else 0.1) * step / 100 * (layer + 1) / 4 + 0.01 * seed
                    rows.append({"task": TASK, "method": method, "lr": lr, "batch_size": bs, "seed": seed,
                                 "step": step, "layer": layer, "layer_name": name, "pooling": "mean",
                                 "metric": "linear_cka", "value": 1 - d})
    return pd.DataFrame(rows)


def _floor(methods=("full",)) -> pd.DataFrame:
    """seed_floor.csv: the chosen setting's similarity between its two seeds (one pair)."""
    rows = []
    for method in methods:
        lr, bs = SETTING[method]
        for step in STEPS:
            for layer, name in enumerate(LAYERS):
                value = 1 - 0.02 * (layer + 1) * step / 100
                row = {"task": TASK, "method": method, "lr": lr, "batch_size": bs, "step": step, "layer": layer,
                       "layer_name": name, "pooling": "mean", "metric": "linear_cka", "value": value,
                       "value_min": value - 0.01, "value_max": min(1.0, value + 0.01), "n_pairs": 1, "final": False}
                rows.append(row)
                if step == STEPS[-1]:  # the pair's own last common step (one pair: the same values)
                    rows.append({**row, "final": True})
    return pd.DataFrame(rows)


def _write(tmp_path: Path, name: str, frame: pd.DataFrame) -> Path:
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------------- drift: the seed floor


def test_floor_in_drift_units_and_by_layer_line(tmp_path, plotted):
    floor = read_table(_write(tmp_path, "seed_floor", _floor()))
    fl = drift.floor_drift(floor, _best(), TASK, "linear_cka", "mean")
    last = fl[fl.final.astype(bool)].sort_values("layer")
    expected = [0.02 * (layer + 1) for layer in range(len(LAYERS))]  # 1 − (1 − 0.02 (layer + 1))
    assert np.allclose(last.floor_drift, expected)
    # drift reverses the order: the most similar pair (value_max) is the smallest drift
    assert np.allclose(last.floor_drift_min, [e - 0.01 for e in expected])
    assert np.allclose(last.floor_drift_max, [e + 0.01 for e in expected])

    path = tmp_path / "by_layer.svg"
    drift.plot_drift_by_layer(read_table(_write(tmp_path, "drift", _drift())), _runs(), _best(), TASK, "linear_cka",
                              "mean", path, floor=floor)
    (line,) = [ln for ln in plotted["lines"] if str(ln.get_label()).startswith("seed floor, full")]
    assert np.allclose(line.get_xdata(), range(len(LAYERS))) and np.allclose(line.get_ydata(), expected)
    text = svg_text(path)
    assert "seed floor, full (step 100, 1 seed pair)" in text
    assert "lora: no seed floor (seed floor needs ≥ 2 seeds)" in text  # LoRA's setting has no floor rows


def test_over_training_floor_or_note(tmp_path):
    frame = read_table(_write(tmp_path, "drift", _drift()))
    with_floor, without = tmp_path / "with.svg", tmp_path / "without.svg"
    drift.plot_drift_over_training(frame, _runs(), _best(), TASK, "linear_cka", "mean", with_floor,
                                   floor=read_table(_write(tmp_path, "floor", _floor(("full", "lora")))))
    drift.plot_drift_over_training(frame, _runs(), _best(), TASK, "linear_cka", "mean", without, floor=None)
    assert "seed floor: same setting, other seed" in svg_text(with_floor)
    assert "seed floor needs ≥ 2 seeds" not in svg_text(with_floor)
    assert "full and lora: no seed floor (seed floor needs ≥ 2 seeds)" in svg_text(without)


def test_drift_table_has_floor_and_probe_interval(tmp_path):
    by_layer = pd.DataFrame([{"task": TASK, "method": m, "layer": layer, "layer_name": name, "metric": "linear_cka",
                              "pooling": "mean", "value_mean": 0.9, "value_ci_low": 0.85, "value_ci_high": 0.95,
                              "n_seeds": 2, "floor_mean": np.nan, "probe_ci_low": 0.8 - 0.01 * layer,
                              "probe_ci_high": 0.9 - 0.01 * layer, "debiased_value_mean": 0.88}
                             for m in SETTING for layer, name in enumerate(LAYERS)])
    paths = {"drift": _write(tmp_path, "drift", _drift()), "runs": _write(tmp_path, "runs", _runs()),
             "run_drift": _write(tmp_path, "run_drift", run_drift_table(_drift())),
             "best": _write(tmp_path, "best", _best()), "seed_floor": _write(tmp_path, "seed_floor", _floor()),
             "drift_by_layer": _write(tmp_path, "drift_by_layer", by_layer)}
    out = {k: tmp_path / "out" / k for k in drift.FIGURES} | {"table": tmp_path / "out/table.csv"}
    drift.write_drift(**paths, task=TASK, outputs=out)
    table = pd.read_csv(out["table"])
    full = table[table.method == "full"].sort_values("layer")
    assert np.allclose(full.floor_drift_mean, [0.02 * (layer + 1) for layer in range(len(LAYERS))])
    assert (full.floor_n_pairs == 1).all() and (full.floor_step == 100).all()
    # final drift per seed: 0.3 (layer + 1) / 4 + 0.01 seed; mean over seeds 1, 2
    hand = [0.3 * (layer + 1) / 4 + 0.015 for layer in range(len(LAYERS))]
    assert np.allclose(full.drift_mean, hand)
    assert np.allclose(full.drift_above_floor, np.array(hand) - full.floor_drift_mean.to_numpy())
    assert table[table.method == "lora"].floor_drift_mean.isna().all()  # fewer than 2 seeds: no floor
    assert np.allclose(full.probe_drift_ci_low, [0.1 + 0.01 * layer for layer in range(len(LAYERS))])
    assert np.allclose(full.probe_drift_ci_high, [0.2 + 0.01 * layer for layer in range(len(LAYERS))])
    assert "seed floor, full" in svg_text(out["by_layer"] / "linear_cka/mean.svg")
    # seed_floor.csv absent: the figures say the floor is unavailable, nothing crashes
    drift.write_drift(**(paths | {"seed_floor": tmp_path / "absent.csv"}), task=TASK, outputs=out)
    assert "seed floor needs ≥ 2 seeds" in svg_text(out["over_training"] / "linear_cka/mean.svg")


# ---------------------------------------------------------------------------- a method vs the reference


def _pairs(seeds=(1, 2)) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        for step in STEPS:
            for layer, name in enumerate(LAYERS):
                for metric in ("linear_cka", "cosine"):
                    rows.append({"task": TASK, "reference": "full", "method": "lora", "seed": seed,
                                 "lr_ref": "3e-05", "batch_size_ref": 16, "lr_method": "0.0003",
                                 "batch_size_method": 16, "step": step, "layer": layer,
                                 "layer_name": name, "pooling": "mean", "metric": metric,
                                 "value": 1 - 0.001 * step * (layer + 1) / (seed + 1), "bootstrap_se": 0.01 * seed})
    return pd.DataFrame(rows)


def _layer_grid(seeds=(1, 2)) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame([{"task": TASK, "reference": "full", "method": "lora", "seed": seed, "pooling": "mean",
                          "layer_ref": i, "layer_name_ref": LAYERS[i], "layer_method": j,
                          "layer_name_method": LAYERS[j], "value": float(rng.uniform(0.2, 1.0))}
                         for seed in seeds for i in range(len(LAYERS)) for j in range(len(LAYERS))])


NAMES = {"method": "lora", "reference": "full"}


def test_method_vs_reference_figures_and_heatmap_mean(tmp_path, plotted):
    grid = _layer_grid()
    paths = {"pairs": _write(tmp_path, "pairs", _pairs()), "layers": _write(tmp_path, "grid", grid),
             "best": _write(tmp_path, "best", _best()), "runs": _write(tmp_path, "runs", _runs())}
    out = {"over_training": tmp_path / "o.svg", "layers": tmp_path / "l.svg", "table": tmp_path / "t.csv"}
    similarity.write_similarity(**paths, task=TASK, **NAMES, outputs=out)
    # heatmap: rows = the method's layer, columns = the reference's layer, mean over seeds, by a plain loop
    hand = np.zeros((len(LAYERS), len(LAYERS)))
    for j in range(len(LAYERS)):
        for i in range(len(LAYERS)):
            cell = [r.value for r in grid.itertuples() if r.layer_method == j and r.layer_ref == i]
            hand[j, i] = sum(cell) / len(cell)
    (image,) = plotted["images"]
    assert np.allclose(image, hand)
    # over training: one line per layer and metric, the mean over seeds 1 and 2
    line = [ln for ln in plotted["lines"] if len(ln.get_xdata()) == len(STEPS)]
    assert len(line) == 2 * len(LAYERS)
    layer3 = [1 - 0.001 * s * 4 * (1 / 2 + 1 / 3) / 2 for s in STEPS]
    assert any(np.allclose(ln.get_ydata(), layer3) for ln in line)
    text = svg_text(out["over_training"])
    assert "full lr 3e-5, batch 16; lora lr 3e-4, batch 16; mean over 2 seeds" in text
    assert "sst2: lora vs full, same layer, over training" in text
    assert "linear CKA, mean pooling" in text and "cosine similarity, mean pooling" in text
    assert "lora: layer" in svg_text(out["layers"]) and "full (reference): layer" in svg_text(out["layers"])
    table = pd.read_csv(out["table"])
    row = table[(table.metric == "linear_cka") & (table.layer == 3)].iloc[0]
    assert (row.method, row.reference) == ("lora", "full")
    assert row.step == 100 and row.n_seeds == 2 and np.isclose(row.value_mean, layer3[-1])
    assert np.isclose(row.bootstrap_se_mean, 0.015)


def test_method_vs_reference_leaves_out_diverged_and_says_why_when_empty(tmp_path, plotted):
    grid = _layer_grid()
    runs = _write(tmp_path, "runs", _runs(diverged=[("full", 2)]))
    out = {"over_training": tmp_path / "o.svg", "layers": tmp_path / "l.svg", "table": tmp_path / "t.csv"}
    similarity.write_similarity(pairs=_write(tmp_path, "pairs", _pairs()), layers=_write(tmp_path, "g", grid),
                                best=_write(tmp_path, "best", _best()), runs=runs, task=TASK, **NAMES, outputs=out)
    seed1 = grid[grid.seed == 1].pivot(index="layer_method", columns="layer_ref", values="value").to_numpy()
    assert np.allclose(plotted["images"][0], seed1)  # seed 2's full run diverged
    assert "mean over 1 seed" in svg_text(out["layers"])
    # header-only CSVs: the task has no seed both chosen settings ran
    empty = {"pairs": _write(tmp_path, "p0", _pairs().iloc[:0]), "layers": _write(tmp_path, "g0", grid.iloc[:0])}
    similarity.write_similarity(**empty, best=_write(tmp_path, "best", _best()), task=TASK, **NAMES, outputs=out)
    assert "no seed that both chosen settings ran" in svg_text(out["over_training"])
    assert "lora_layers.csv has no rows" in svg_text(out["layers"])
    assert pd.read_csv(out["table"]).empty


def test_similarity_rejects_rows_of_another_task(tmp_path):
    with pytest.raises(ValueError, match="rows of other tasks"):
        similarity.read_pairs(_write(tmp_path, "p", _pairs().assign(task="mrpc")), TASK)


# ---------------------------------------------------------------------------- forgetting


def _forgetting(lm_ok: bool) -> pd.DataFrame:
    rows = []
    for task in ("sst2", "mrpc"):
        for method, (lr, bs) in SETTING.items():
            for seed in (1, 2):
                status = "diverged" if (task, method, seed) == ("mrpc", "full", 2) else "completed"
                rows.append({"task": task, "method": method, "lr": lr, "batch_size": bs, "seed": seed,
                             "status": status, "val_main": 0.9, "in_task_gain": 0.1 if method == "full" else 0.08,
                             "out_of_task_drift": 0.3 if method == "full" else 0.1,
                             "probe_drop": 0.05 if method == "full" else 0.01,
                             "lm_status": "ok" if lm_ok else "skipped",
                             "lm_reason": "" if lm_ok else "forgetting.text_file is null",
                             "lm_base_perplexity": 20.0 if lm_ok else np.nan,
                             "lm_finetuned_perplexity": (30.0 if method == "full" else 22.0) if lm_ok else np.nan})
    return pd.DataFrame(rows)


def _out_of_task() -> pd.DataFrame:
    rows = []
    for task, probe in (("sst2", "mrpc"), ("mrpc", "sst2")):
        for method, (lr, bs) in SETTING.items():
            for seed in (1, 2):
                for layer, name in enumerate(LAYERS):
                    rows.append({"task": task, "method": method, "lr": lr, "batch_size": bs, "seed": seed,
                                 "probe_task": probe, "layer": layer, "layer_name": name, "pooling": "mean",
                                 "metric": "linear_cka", "value": 1 - 0.01 * seed * (layer + 1), "bootstrap_se": 0.0})
    return pd.DataFrame(rows)


def _best_two_tasks() -> pd.DataFrame:
    return pd.concat([_best(), _best().assign(task="mrpc")], ignore_index=True)


def test_forgetting_with_lm_skipped_says_so(tmp_path, plotted):
    transfer = pd.DataFrame(columns=RUN_KEYS + ["probe_task", "metric", "base", "finetuned", "drop", "status",
                                                "reason"])
    out = {"scatter": tmp_path / "s.svg", "by_layer": tmp_path / "b.svg", "table_html": tmp_path / "t.html",
           "table_csv": tmp_path / "t.csv"}
    forgetting.write_forgetting(forgetting=_write(tmp_path, "f", _forgetting(lm_ok=False)),
                                out_of_task=_write(tmp_path, "o", _out_of_task()),
                                probe_transfer=_write(tmp_path, "p", transfer),
                                best=_write(tmp_path, "b", _best_two_tasks()),
                                metric="linear_cka", pooling="mean", outputs=out)
    note = "LM perplexity not measured: forgetting.text_file is null"
    scatter = svg_text(out["scatter"])
    assert note in scatter and "left out: 1 diverged" in scatter
    page = out["table_html"].read_text()
    assert note in page and "No probe transfer rows" in page and "diverged" in page
    table = pd.read_csv(out["table_csv"])
    assert list(table.columns) == forgetting.TABLE_COLUMNS and len(table) == 8
    # by layer: mrpc fine-tuned, LoRA, on sst2's probe set; seed 2 of full left out (diverged)
    lines = [ln for ln in plotted["lines"] if len(ln.get_xdata()) == len(LAYERS)]
    hand_both = [0.015 * (layer + 1) for layer in range(len(LAYERS))]  # mean over seeds 1, 2 of 1 − value
    hand_seed1 = [0.01 * (layer + 1) for layer in range(len(LAYERS))]
    assert sum(np.allclose(ln.get_ydata(), hand_both) for ln in lines) == 3  # every series but mrpc's full
    assert sum(np.allclose(ln.get_ydata(), hand_seed1) for ln in lines) == 1
    text = svg_text(out["by_layer"])
    assert "probe set: mrpc" in text and "fine-tuned on mrpc full n=1, lora n=2" in text


def test_forgetting_with_lm_measured(tmp_path, plotted):
    table = forgetting.forgetting_table(read_table(_write(tmp_path, "f", _forgetting(lm_ok=True))))
    assert forgetting.lm_note(table) is None
    full = table[table.method == "full"]
    assert np.allclose(full.lm_perplexity_ratio, 30.0 / 20.0)
    forgetting.plot_forgetting_scatter(table, tmp_path / "s.svg")
    ratio_points = sorted(ln.get_ydata()[0] for ln in plotted["lines"]
                          if len(ln.get_xdata()) == 1 and np.isclose(ln.get_ydata()[0], [1.5, 1.1]).any())
    assert len(ratio_points) == 7  # 8 runs, one diverged
    assert "LM perplexity measured for 8 of 8 runs; base model 20" in forgetting.forgetting_page(table, None)
    with pytest.raises(ValueError, match="forgetting.csv: missing columns"):
        forgetting.forgetting_table(table.drop(columns=["probe_drop"]))


# ---------------------------------------------------------------------------- overview: H1 / H2 detail


def test_overview_shows_the_h2_test_floor_and_reasons():
    verdicts = pd.DataFrame([
        {"task": "sst2", "method": "lora", "reference": "full", "metric": "accuracy",
         "analysis": "paired by seed (n = 3)", "method_minus_reference": -0.01,
         "diff_ci_low": -0.02, "diff_ci_high": 0.0, "h1_relative_drop": 0.011, "h1_ci_low": 0.0, "h1_ci_high": 0.02,
         "h1_verdict": "supported", "h1_reason": "interval within tolerance", "h1_mode": "relative",
         "h1_tolerance": 0.03, "h1_difference": -0.01, "h2_drift_metric": "linear_cka", "h2_pooling": "mean",
         "h2_drift_reduction": 0.6, "h2_ci_low": 0.4, "h2_ci_high": 0.8, "h2_verdict": "inconclusive",
         "h2_reason": "3 seeds: the smallest possible p is 0.1 > α", "h2_difference": 0.12, "h2_p_value": 0.1,
         "h2_p_holm": 0.2, "h2_min_p": 0.1, "h2_alpha": 0.05, "h2_seed_floor": 0.034, "h2_exceeds_floor": True,
         "h2_test": "exact permutation test over 3 + 3 seeds: p = 0.1 (Holm 0.2)"},
        {"task": "mrpc", "method": "ia3", "reference": "full", "metric": "f1", "analysis": "unpaired",
         "method_minus_reference": np.nan, "diff_ci_low": np.nan,
         "diff_ci_high": np.nan, "h1_relative_drop": np.nan, "h1_ci_low": np.nan, "h1_ci_high": np.nan,
         "h1_verdict": "inconclusive", "h1_reason": "one seed of LoRA", "h1_mode": "absolute", "h1_tolerance": 0.5,
         "h1_difference": np.nan, "h2_drift_metric": "linear_cka", "h2_pooling": "mean", "h2_drift_reduction": np.nan,
         "h2_ci_low": np.nan, "h2_ci_high": np.nan, "h2_verdict": "not supported", "h2_reason": "below floor",
         "h2_difference": 0.001, "h2_p_value": np.nan, "h2_p_holm": np.nan, "h2_min_p": np.nan, "h2_alpha": 0.05,
         "h2_seed_floor": np.nan, "h2_exceeds_floor": np.nan, "h2_test": np.nan}])
    h2 = overview.h2_table(verdicts)
    assert h2.loc[0, "p (Holm)"] == 0.2 and h2.loc[0, "seed floor"] == 0.034 and h2.loc[0, "exceeds floor"] == "yes"
    assert h2.loc[0, "why inconclusive"] == "3 seeds: the smallest possible p is 0.1 > α"
    assert h2.loc[1, "exceeds floor"] == "n/a" and h2.loc[1, "why inconclusive"] == ""  # not supported: no reason
    h1 = overview.h1_table(verdicts)
    assert list(h1["H1 rule"]) == ["relative, tolerance 0.030", "absolute, tolerance 0.500"]
    assert list(h1["why inconclusive"]) == ["", "one seed of LoRA"]
    assert list(h1["judged (CI)"]) == ["relative drop 0.011 [0, 0.020]", "reference − method n/a"]
    assert list(h1["method"]) == ["lora", "ia3"] and list(h2["method"]) == ["lora", "ia3"]
    page, _ = overview.overview_page(None, None, None, verdicts, {"analysis": {"h2_alpha": 0.01}}, None)
    for expected in ("p (Holm)", "<td class=\"num\">0.200</td>", "exceeds floor", "0.034",
                     "exact permutation test over 3 + 3 seeds: p = 0.1 (Holm 0.2)", "one seed of LoRA",
                     "rejects at α = 0.01", "relative, tolerance 0.030"):
        assert expected in page, expected
    assert re.search(r"n/a</td>", page)  # NaN cells are written, not crashed on


def test_setup_names_a_task_with_its_own_seeds():
    """task_overrides.<task>.grid.seeds: the overview's grid line names the task's seeds beside grid.seeds."""
    from ftdrift.report.overview import _setup_html

    study = {"tasks": ["sst2", "rte"], "grid": {"seeds": [42], "batch_sizes": [32], "learning_rates": {}},
             "task_seeds": {"sst2": [42, 43], "rte": [42]}}
    html = _setup_html(study)
    assert "seeds 42; sst2: seeds 42, 43</p>" in html and "rte: seeds" not in html
