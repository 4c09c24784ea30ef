"""ftdrift.analysis.method_comparison on tables written here: closeness to the reference from the pair
tables (each seed at its own last step), the ranking by closeness, the Pareto front against a brute-force
dominance check, a missing forgetting table; and the Methods report figures from those tables."""

import itertools

import numpy as np
import pandas as pd
import pytest

from ftdrift.analysis import method_comparison as mc
from ftdrift.analysis.pairs import METHOD_PAIR_COLUMNS

LAYERS = ["embeddings", "block_0", "block_1"]
# final linear CKA to the reference per layer, per seed (seed 2 of lora_all stops one snapshot earlier)
FINAL = {"lora": {1: [0.9, 0.6, 0.3], 2: [0.8, 0.5, 0.2]},
         "lora_all": {1: [0.95, 0.9, 0.85], 2: [0.97, 0.92, 0.8]},
         "ia3": {1: [0.99, 0.2, 0.1], 2: [0.97, 0.3, 0.1]}}
COST = {"full": 1_000_000, "lora": 2_000, "lora_all": 20_000, "ia3": 500}


def pair_table(path, method: str) -> str:
    """A pair table as rule method_similarity writes it: steps 0 and 10 (seed 2 of lora_all: 0 and 5), the
    final values of FINAL at the last step, an unrelated cosine row and a 'last' pooling row that must not count."""
    rows = []
    for seed, values in FINAL[method].items():
        last = 5 if (method, seed) == ("lora_all", 2) else 10
        for step in (0, last):
            for layer, value in enumerate(values):
                for metric, pooling in (("linear_cka", "mean"), ("cosine", "mean"), ("linear_cka", "last")):
                    final = value if (metric, pooling) == ("linear_cka", "mean") else 0.0
                    rows.append({"task": "sst2", "reference": "full", "method": method, "seed": seed, "lr_ref": "1e-4",
                                 "batch_size_ref": 8, "lr_method": "1e-3", "batch_size_method": 8, "step": step,
                                 "layer": layer, "layer_name": LAYERS[layer], "pooling": pooling, "metric": metric,
                                 "value": final if step == last else 1.0, "bootstrap_se": np.nan})
    pd.DataFrame(rows, columns=METHOD_PAIR_COLUMNS).to_csv(path, index=False)
    return str(path)


def tables(tmp_path, forgetting: bool = True):
    best = pd.DataFrame([{"task": "sst2", "method": m, "lr": "1e-3", "batch_size": 8, "main_metric": "accuracy",
                          "n_seeds": 2, "val_mean": val, "val_ci_low": val - 0.01, "val_ci_high": val + 0.01,
                          "drift_mean": drift, "drift_ci_low": drift - 0.01, "drift_ci_high": drift + 0.01,
                          "trainable_fraction": COST[m] / 1e6}
                         for m, val, drift in (("full", 0.92, 0.4), ("lora", 0.90, 0.1), ("lora_all", 0.91, 0.3),
                                               ("ia3", 0.85, 0.05))])
    runs = pd.DataFrame([{"task": "sst2", "method": m, "lr": "1e-3", "batch_size": 8, "seed": s, "status": st,
                          "trainable_params": COST[m] if st != "diverged" else 1}
                         for m in COST for s, st in ((1, "completed"), (2, "completed"), (3, "diverged"))])
    paths = {"best": tmp_path / "best.csv", "runs": tmp_path / "runs.csv", "forgetting": tmp_path / "forgetting.csv"}
    best.to_csv(paths["best"], index=False)
    runs.to_csv(paths["runs"], index=False)
    if forgetting:
        drop = {"full": 0.10, "lora": 0.02, "lora_all": 0.05, "ia3": 0.01}
        pd.DataFrame([{**r, "probe_drop": drop[r["method"]] + 0.01 * r["seed"], "out_of_task_drift": 0.2,
                       "lm_base_perplexity": 10.0, "lm_finetuned_perplexity": 12.0}
                      for r in runs.to_dict("records")]).to_csv(paths["forgetting"], index=False)
    pairs = [pair_table(tmp_path / f"{m}.csv", m) for m in FINAL]
    return paths, pairs


def test_closeness_takes_each_seed_at_its_last_step_and_ranks_the_methods(tmp_path):
    paths, pairs = tables(tmp_path)
    outputs = {"methods": tmp_path / "methods.csv", "closeness": tmp_path / "closeness.csv"}
    mc.compare_methods(best=paths["best"], runs=paths["runs"], forgetting=paths["forgetting"], pair_paths=pairs,
                       reference="full", analysis={"h2_metric": "linear_cka", "h2_pooling": "mean"}, outputs=outputs,
                       methods=["full", "lora", "lora_all", "ia3"])
    close = pd.read_csv(outputs["closeness"])
    assert len(close) == 3 * len(LAYERS) and set(close.n_seeds) == {2}
    for row in close.itertuples():
        values = [FINAL[row.method][seed][row.layer] for seed in (1, 2)]
        assert (row.value_mean, row.value_min, row.value_max) == pytest.approx(
            (np.mean(values), min(values), max(values)))
    table = pd.read_csv(outputs["methods"]).set_index("method")
    assert list(table.index) == ["full", "lora", "lora_all", "ia3"]  # the configured order
    mean = {m: np.mean([np.mean(v) for v in FINAL[m].values()]) for m in FINAL}
    for m in FINAL:
        assert table.loc[m, "similarity_mean"] == pytest.approx(mean[m])
        assert table.loc[m, "similarity_min_layer"] == pytest.approx(
            min(np.mean([FINAL[m][s][layer] for s in (1, 2)]) for layer in range(len(LAYERS))))
    # closeness: lora_all 0.898, lora 0.55, ia3 0.445 (means over seeds and layers)
    assert mean["lora_all"] > mean["lora"] > mean["ia3"]
    assert table.closeness_rank[["lora_all", "lora", "ia3"]].tolist() == [1, 2, 3]
    assert np.isnan(table.loc["full", "closeness_rank"]) and bool(table.loc["full", "is_reference"])
    # trainable parameters and forgetting: means over the usable runs of the chosen setting (diverged seed 3 out)
    assert table.trainable_params.to_dict() == COST
    assert table.loc["lora", "forgetting_probe_drop"] == pytest.approx(0.02 + 0.015)
    assert table.loc["ia3", "lm_perplexity_ratio"] == pytest.approx(1.2)


def brute_front(values, higher):
    """A point is on the front when no other point is >= on every objective and > on one (written out)."""
    out = []
    for i, a in enumerate(values):
        dominated = False
        for j, b in enumerate(values):
            if i == j:
                continue
            better_eq = all((bj >= aj) if up else (bj <= aj) for aj, bj, up in zip(a, b, higher))
            strictly = any((bj > aj) if up else (bj < aj) for aj, bj, up in zip(a, b, higher))
            dominated |= better_eq and strictly
        out.append(not dominated)
    return out


def test_pareto_front_matches_a_brute_force_check():
    rng = np.random.default_rng(0)
    for n, k in itertools.product((1, 3, 8), (2, 4)):
        values = rng.integers(0, 4, size=(n, k)).astype(float)  # ties on purpose
        higher = [True] + [False] * (k - 1)
        assert mc.pareto_front(values, higher).tolist() == brute_front(values.tolist(), higher)
    with_nan = np.array([[1.0, 1.0], [np.nan, 0.0], [0.5, 2.0]])
    assert mc.pareto_front(with_nan, [True, False]).tolist() == [True, False, False]


def test_pareto_flags_and_a_missing_forgetting_table(tmp_path):
    paths, pairs = tables(tmp_path, forgetting=False)
    close = mc.closeness_table(pairs, "linear_cka", "mean")
    best, runs = (pd.read_csv(paths[k], dtype={"lr": str}) for k in ("best", "runs"))
    table = mc.methods_table(best, runs,
                             close, None, "full", "linear_cka", "mean", ["full", "lora", "lora_all", "ia3"])
    assert table.forgetting_probe_drop.isna().all() and table.lm_perplexity_ratio.isna().all()
    assert set(table.pareto_objectives) == {"val_mean, trainable_params, drift_mean"}
    # (val, params, drift): full (0.92, 1e6, 0.4), lora (0.90, 2e3, 0.1), lora_all (0.91, 2e4, 0.3),
    # ia3 (0.85, 500, 0.05): none dominates another
    assert table.pareto.tolist() == [True, True, True, True]
    worse = table.assign(val_mean=[0.92, 0.90, 0.89, 0.85], drift_mean=[0.4, 0.1, 0.3, 0.05])
    front, _ = mc._fronts(worse)
    assert front.tolist() == [True, True, False, True]  # lora_all: lower val, more params and drift than lora


def test_the_methods_report_writes_its_figures(tmp_path, monkeypatch):
    from ftdrift.report import frames
    from ftdrift.report.methods import ranking_order, write_methods

    for attr in ("order", "labels", "reference", "adapters"):  # the registry is the process's: undone after the test
        monkeypatch.setattr(frames._Methods, attr, getattr(frames._Methods, attr))
    frames.configure_methods({"methods": {"full": {}, "lora": {"peft": {"peft_type": "LORA", "r": 8}},
                                          "lora_all": {"peft": {"peft_type": "LORA", "r": 16}},
                                          "ia3": {"peft": {"peft_type": "IA3"}}},
                              "analysis": {"reference_method": "full"}})
    paths, pairs = tables(tmp_path)
    outputs = {"methods": tmp_path / "methods.csv", "closeness": tmp_path / "closeness.csv"}
    mc.compare_methods(best=paths["best"], runs=paths["runs"], forgetting=paths["forgetting"], pair_paths=pairs,
                       reference="full", analysis={"h2_metric": "linear_cka", "h2_pooling": "mean"}, outputs=outputs)
    report = {"ranking": tmp_path / "ranking.svg", "pareto": tmp_path / "pareto.svg", "table": tmp_path / "m.html"}
    write_methods(methods=outputs["methods"], closeness=outputs["closeness"], outputs=report)
    svg = report["ranking"].read_text()
    assert "#1 lora_all" in svg and "#3 ia3" in svg and "closeness (#1 = closest) vs cost" in svg
    assert "forgetting: frozen-probe drop" in report["pareto"].read_text()
    assert "lora_all (LORA r=16)" in report["table"].read_text()
    assert ranking_order(pd.read_csv(outputs["methods"]), "sst2") == ["lora_all", "lora", "ia3"]
    # no comparison yet: the figures say so
    empty = {k: tmp_path / f"empty_{v.name}" for k, v in report.items()}
    pd.DataFrame(columns=mc.CLOSENESS_COLUMNS).to_csv(tmp_path / "none.csv", index=False)
    write_methods(methods=outputs["methods"], closeness=tmp_path / "none.csv", outputs=empty)
    assert "no method has a seed in common" in empty["ranking"].read_text()
