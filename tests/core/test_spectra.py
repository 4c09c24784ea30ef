"""Tests for ftdrift.core.spectra against hand-computed values and explicit loops, and the weight-space
report's sweep tables against loops over the frames built here."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ftdrift.core.spectra import (
    effective_rank,
    energy_rank,
    intruder_dimensions,
    intruder_sweep,
    spectrum_summary,
    stable_rank,
)


def test_effective_rank_hand_values():
    # p = (3/4, 1/4): H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335...
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank([3.0, 1.0]) == pytest.approx(math.exp(h))
    assert effective_rank([3.0, 1.0]) == pytest.approx(1.754765, rel=1e-6)
    assert effective_rank([2.0, 2.0, 2.0, 2.0]) == pytest.approx(4.0)
    assert effective_rank([5.0, 0.0, 0.0]) == pytest.approx(1.0)  # zeros ignored
    assert effective_rank([1.0, 1.0, 0.0]) == pytest.approx(2.0)
    assert effective_rank(torch.tensor([3.0, 1.0])) == pytest.approx(math.exp(h))
    assert effective_rank([0.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        effective_rank([1.0, -1.0])


def test_stable_rank_hand_values():
    # diag(3, 4): ||M||_F^2 = 25, ||M||_2^2 = 16
    assert stable_rank(np.diag([3.0, 4.0])) == pytest.approx(25 / 16)
    assert stable_rank(np.outer([1.0, 2.0], [3.0, 1.0, 1.0])) == pytest.approx(1.0)  # rank one
    assert stable_rank(np.eye(5)) == pytest.approx(5.0)
    assert stable_rank(torch.eye(3, dtype=torch.float16)) == pytest.approx(3.0)
    assert stable_rank(np.zeros((2, 3))) == 0.0


def test_intruder_dimensions_hand_examples():
    base = np.diag([2.0, 1.0])  # left singular vectors e1, e2
    c = math.cos(math.pi / 4)
    rot = np.array([[c, -c], [c, c]])
    ft = rot @ base  # left singular vectors rotated by 45 degrees: |cos| = 0.7071
    assert intruder_dimensions(base, ft, k=2, epsilon=0.5) == 0
    assert intruder_dimensions(base, ft, k=2, epsilon=0.75) == 2
    assert intruder_dimensions(base, ft, k=1, epsilon=0.75) == 1
    # 3-D: ft = Q diag(3, 2, 1) with Q's columns u1 = (1,1,1)/sqrt3, u2 = (1,-1,0)/sqrt2,
    # u3 = (1,1,-2)/sqrt6; their max |cos| with the base vectors e_i are
    # 1/sqrt3 = 0.577, 1/sqrt2 = 0.707 and 2/sqrt6 = 0.816.
    base3 = np.diag([3.0, 2.0, 1.0])
    q = np.column_stack([np.ones(3) / math.sqrt(3), np.array([1.0, -1.0, 0.0]) / math.sqrt(2),
                         np.array([1.0, 1.0, -2.0]) / math.sqrt(6)])
    ft3 = q @ base3
    assert intruder_dimensions(base3, ft3, k=1, epsilon=0.5) == 0
    assert intruder_dimensions(base3, ft3, k=1, epsilon=0.6) == 1
    assert intruder_dimensions(base3, ft3, k=3, epsilon=0.75) == 2
    assert intruder_dimensions(base3, ft3, k=3, epsilon=0.9) == 3


def naive_intruders(w_base, w_ft, k, eps):
    ub = np.linalg.svd(w_base)[0]
    uf = np.linalg.svd(w_ft)[0]
    count = 0
    for j in range(k):
        best = 0.0
        for i in range(min(w_base.shape)):
            a, b = uf[:, j], ub[:, i]
            best = max(best, abs(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)))
        count += best < eps
    return count


def test_intruder_dimensions_random_rank_one_update():
    rng = np.random.default_rng(1)
    d = 64
    q1, _ = np.linalg.qr(rng.standard_normal((d, d)))
    q2, _ = np.linalg.qr(rng.standard_normal((d, d)))
    w_base = q1 @ np.diag(10 * 0.9 ** np.arange(d)) @ q2.T
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    w_ft = w_base + 50.0 * np.outer(u, v)  # a new, dominant direction
    n = intruder_dimensions(w_base, w_ft, k=5, epsilon=0.5)
    assert n == naive_intruders(w_base, w_ft, 5, 0.5)
    assert n >= 1
    assert intruder_dimensions(w_base, w_base, k=5) == 0
    assert intruder_dimensions(w_base, w_base + 1e-6 * rng.standard_normal((d, d)), k=5) == 0
    # rectangular, torch input
    wr = rng.standard_normal((20, 12))
    wr_ft = wr + 30.0 * np.outer(rng.standard_normal(20), rng.standard_normal(12)) / 15
    assert intruder_dimensions(torch.from_numpy(wr), torch.from_numpy(wr_ft), k=4) == \
        naive_intruders(wr, wr_ft, 4, 0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        intruder_dimensions(wr, wr.T)


def test_spectrum_summary_hand_values():
    m = np.zeros((3, 4))
    m[0, 0], m[1, 1] = 4.0, 3.0  # singular values 4, 3, 0
    out = spectrum_summary(m)
    p = np.array([4 / 7, 3 / 7])
    assert out["effective_rank"] == pytest.approx(math.exp(-np.sum(p * np.log(p))))
    assert out["stable_rank"] == pytest.approx(25 / 16)
    assert out["frobenius_norm"] == pytest.approx(5.0)
    assert out["top_singular_value"] == pytest.approx(4.0)
    assert set(out) == {"effective_rank", "stable_rank", "frobenius_norm", "top_singular_value"}
    zero = spectrum_summary(torch.zeros(2, 2))
    assert zero == {"effective_rank": 0.0, "stable_rank": 0.0, "frobenius_norm": 0.0,
                    "top_singular_value": 0.0}


# -- intruder sweep over (k, ε) and energy rank

def column_model(base_values, new_sigmas, new_cosines):
    """W_base = [diag(b); 0] (2n x n) and W_ft with column j replaced by b_j e_j + s_j e_{n+j}.

    Columns stay orthogonal, so W_ft's left singular vectors are its normalised columns and its
    singular values their norms: a modified column j has sigma_j and cosine b_j / sigma_j with base
    vector e_j (and 0 with every other one). Each change is a rank-1 update s_j e_{n+j} e_j^T
    orthogonal to all base singular vectors e_1..e_n. Returns (w_base, w_ft).
    """
    n = len(base_values)
    w_base = np.zeros((2 * n, n))
    w_base[np.arange(n), np.arange(n)] = base_values
    w_ft = w_base.copy()
    for j, (sigma, cos) in enumerate(zip(new_sigmas, new_cosines)):
        if sigma is None:
            continue
        w_ft[j, j] = cos * sigma
        w_ft[n + j, j] = sigma * math.sqrt(1 - cos**2)
    return w_base, w_ft


def test_intruder_sweep_single_rank_one_update_known_counts():
    # base singular vectors e1..e4 (values 4, 3, 2, 1); column 2 becomes 3 e2 + s e5 with norm 10:
    # the new top singular vector has cosine 3/10 = 0.3 with e2 → replace b_2 by 3.2 for cosine 0.32
    w_base, _ = column_model([4.0, 3.0, 2.0, 1.0], [None] * 4, [None] * 4)
    w_ft = w_base.copy()
    w_ft[4, 1] = math.sqrt(10.0**2 - 3.0**2)  # rank-1 update s e5 e2^T, s = sqrt(91): column norm 10
    cos = 3.0 / 10.0
    assert intruder_sweep(w_base, w_ft, [1], [cos - 1e-9, cos + 1e-9]).tolist() == [[0, 1]]
    counts = intruder_sweep(w_base, w_ft, [1, 2, 4, 10], [0.2, 0.4, 0.9])
    # the intruder is the top vector (sigma 10 > 4); the others are e1, e3, e4 (cosine 1: never intruders)
    assert counts.tolist() == [[0, 1, 1]] * 4
    assert counts.dtype.kind == "i" and counts.shape == (4, 3)


def test_intruder_sweep_constructed_counts_for_every_k_and_epsilon():
    # new singular values 8, 6, 4, 2 with cosines 0.35, 0.95, 0.55, 0.75 to their base vectors
    sigmas, cosines = [8.0, 6.0, 4.0, 2.0], [0.35, 0.95, 0.55, 0.75]
    w_base, w_ft = column_model([c * s for s, c in zip(sigmas, cosines)], sigmas, cosines)
    ks, eps = [1, 2, 3, 4, 6], [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.96]
    expected = [  # counted by hand: the first k cosines (by sigma) below ε
        [0, 1, 1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1, 1, 1, 2],
        [0, 1, 1, 2, 2, 2, 2, 3],
        [0, 1, 1, 2, 2, 3, 3, 4],
        [0, 1, 1, 2, 2, 3, 3, 4],  # k = 6 > min(out, in) = 4: all four vectors
    ]
    assert intruder_sweep(w_base, w_ft, ks, eps).tolist() == expected
    assert intruder_sweep(torch.from_numpy(w_base).float(), torch.from_numpy(w_ft).float(), [3], [0.6]).tolist() \
        == [[2]]


@pytest.mark.parametrize("shape", [(24, 24), (30, 12), (12, 30)])
def test_intruder_sweep_matches_naive_loop(shape):
    rng = np.random.default_rng(sum(shape))
    w_base = rng.standard_normal(shape)
    w_ft = w_base + 0.6 * rng.standard_normal(shape) + 4.0 * np.outer(rng.standard_normal(shape[0]),
                                                                       rng.standard_normal(shape[1])) / shape[0]
    ks, eps = [5, 1, 10, 40], [0.3, 0.5, 0.7, 0.9]
    got = intruder_sweep(w_base, w_ft, ks, eps)
    want = [[naive_intruders(w_base, w_ft, min(k, min(shape)), e) for e in eps] for k in ks]
    assert got.tolist() == want
    assert got[:, -1].max() > 0  # not a trivial all-zero comparison


def test_intruder_sweep_bad_input_is_named():
    w = np.eye(3)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        intruder_sweep(w, w, [0], [0.5])
    with pytest.raises(ValueError, match="ks must hold"):
        intruder_sweep(w, w, [], [0.5])
    with pytest.raises(ValueError, match="epsilons"):
        intruder_sweep(w, w, [1], [])
    with pytest.raises(ValueError, match="shapes differ"):
        intruder_sweep(w, np.eye(4), [1], [0.5])


def naive_energy_rank(s, fraction):
    total = sum(x * x for x in s)
    acc = 0.0
    for n, x in enumerate(sorted(s, reverse=True), start=1):
        acc += x * x
        if acc >= fraction * total - 1e-12 * total:
            return n
    return 0


def test_energy_rank_hand_values():
    # s = [3, 2, 1]: ||ΔW||_F^2 = 14; shares 9/14 = 0.643, 13/14 = 0.929, 1
    assert energy_rank([3.0, 2.0, 1.0], 0.9) == 2
    assert energy_rank([3.0, 2.0, 1.0], 0.6) == 1
    assert energy_rank([3.0, 2.0, 1.0], 9 / 14) == 1  # exactly reached counts
    assert energy_rank([3.0, 2.0, 1.0], 13 / 14) == 2
    assert energy_rank([3.0, 2.0, 1.0], 0.95) == 3
    assert energy_rank([3.0, 2.0, 1.0], 1.0) == 3
    assert energy_rank([1.0, 3.0, 2.0], 0.9) == 2  # any order
    assert energy_rank(torch.tensor([3.0, 2.0, 1.0]), 0.9) == 2
    m = np.zeros((4, 3))
    m[0, 2], m[1, 0], m[3, 1] = 1.0, -3.0, 2.0  # singular values 3, 2, 1
    assert energy_rank(m, 0.9) == 2
    assert energy_rank(np.zeros((3, 2)), 0.9) == 0
    assert energy_rank([0.0, 0.0], 0.5) == 0
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            energy_rank([1.0], bad)
    with pytest.raises(ValueError, match="non-negative"):
        energy_rank([1.0, -1.0], 0.5)
    with pytest.raises(ValueError, match="2-D matrix or 1-D"):
        energy_rank(np.ones((2, 2, 2)), 0.5)


def test_energy_rank_is_the_smallest_truncation_within_the_budget():
    """Eckart–Young: the best rank-n approximation loses exactly the tail's energy, so rank_energy is the
    smallest n whose truncated SVD leaves at most (1 - fraction) of ||ΔW||_F^2 (checked by reconstruction)."""
    rng = np.random.default_rng(7)
    delta = rng.standard_normal((20, 15)) @ np.diag(0.7 ** np.arange(15)) @ rng.standard_normal((15, 15))
    u, s, vt = np.linalg.svd(delta)
    total = (delta**2).sum()
    for fraction in (0.5, 0.8, 0.9, 0.99):
        n = energy_rank(delta, fraction)
        assert n == naive_energy_rank(list(s), fraction)
        residual = lambda r: ((delta - u[:, :r] @ np.diag(s[:r]) @ vt[:r]) ** 2).sum()  # noqa: E731
        assert residual(n) <= (1 - fraction) * total * (1 + 1e-9)
        assert residual(n - 1) > (1 - fraction) * total


# -- report: the sweep figure and tables, on frames built here

def sweep_frames():
    """intruders.csv / weights.csv / best.csv frames: chosen setting lr 1e-3; an unchosen lr 5e-3 and a
    diverged seed whose (huge) values must not enter any mean."""
    rng = np.random.default_rng(3)
    ints, wts = [], []
    for method in ("full", "lora"):
        for lr, seeds in (("1e-3", (1, 2, 3)), ("5e-3", (1,))):
            for seed in seeds:
                status = "diverged" if seed == 3 else "completed"
                for layer in range(3):
                    for matrix in ("query", "value"):
                        module = f"encoder.layer.{layer}.attention.self.{matrix}"
                        run = {"task": "sst2", "method": method, "lr": lr, "batch_size": 16, "seed": seed,
                               "module": module, "layer": layer, "matrix": matrix, "status": status}
                        big = 100 if (status == "diverged" or lr == "5e-3") else 0
                        for k in (5, 10):
                            for eps in (0.3, 0.6, 0.9):
                                ints.append({**run, "k": k, "epsilon": eps,
                                             "intruders": big + int(rng.integers(0, k + 1))})
                        wts.append({**run, "effective_rank": 5.0 + big + rng.random(), "stable_rank": 2.0,
                                    "frobenius_norm": 1.0, "top_singular_value": 1.0, "intruder_dims": 1,
                                    "rank_energy": 3 + big + int(rng.integers(0, 3))})
    best = pd.DataFrame([{"task": "sst2", "method": m, "lr": "1e-3", "batch_size": 16} for m in ("full", "lora")])
    return pd.DataFrame(ints), pd.DataFrame(wts), best


def test_intruder_sweep_table_is_the_mean_over_layers_and_seeds_of_the_chosen_setting():
    from ftdrift.report.weights import intruder_sweep_table

    ints, _, best = sweep_frames()
    table = intruder_sweep_table(ints, best, "sst2")
    assert list(table.columns) == ["task", "method", "lr", "batch_size", "matrix", "k", "epsilon", "intruders_mean",
                                   "intruders_min", "intruders_max", "n_seeds", "n_layers"]
    assert len(table) == 2 * 2 * 2 * 3 and set(table.lr) == {"1e-3"}
    for row in table.itertuples():
        per_seed = {}
        for r in ints.itertuples():  # naive loop: completed rows of the chosen setting only
            if (r.method, r.lr, r.matrix, r.k, r.epsilon, r.status) == (row.method, "1e-3", row.matrix, row.k,
                                                                       row.epsilon, "completed"):
                per_seed.setdefault(r.seed, []).append(r.intruders)
        assert sorted(per_seed) == [1, 2] and row.n_seeds == 2 and row.n_layers == 3
        seed_means = [sum(v) / len(v) for v in per_seed.values()]
        all_values = [x for v in per_seed.values() for x in v]
        assert row.intruders_mean == pytest.approx(sum(all_values) / len(all_values))
        assert (row.intruders_min, row.intruders_max) == pytest.approx((min(seed_means), max(seed_means)))


def svg_strings(path):
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    return " ".join("".join(el.itertext()) for el in root.iter("{http://www.w3.org/2000/svg}text"))


def test_weight_report_writes_sweep_figure_rank_energy_and_tables(tmp_path):
    from ftdrift.report.weights import write_weights

    ints, wts, best = sweep_frames()
    paths = {}
    for name, frame in (("intruders", ints), ("weights", wts), ("best", best)):
        paths[name] = tmp_path / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    out = tmp_path / "out"
    outputs = {"effective_rank": out / "rank", "intruders": out / "intr", "intruder_sweep": out / "sweep",
               "table": out / "by_layer.csv", "sweep_table": out / "sweep.csv"}
    write_weights(weights=paths["weights"], best=paths["best"], intruders=paths["intruders"], tasks=["sst2", "mrpc"],
                  ranks={"lora": 8}, outputs=outputs, settings={"delta_energy": 0.9, "intruder_epsilon": 0.5})
    text = svg_strings(out / "sweep/sst2.svg")
    for expected in ("query — full", "value — lora", "top k = 5", "top k = 10", "headline ε = 0.5"):
        assert expected in text
    assert "results/tables/intruders.csv" in svg_strings(out / "sweep/mrpc.svg")  # no rows: a placeholder
    rank_text = svg_strings(out / "rank/sst2.svg")
    assert "rank holding 90% of ‖ΔW‖²_F" in rank_text and "lora: rank r = 8" in rank_text and "query" in rank_text
    by_layer = pd.read_csv(out / "by_layer.csv", dtype={"lr": str})
    # rank_energy per method x module type x layer: mean over the chosen setting's completed seeds
    chosen = wts[(wts.lr == "1e-3") & (wts.status == "completed")]
    for row in by_layer.itertuples():
        values = [r.rank_energy for r in chosen.itertuples()
                  if (r.method, r.matrix, r.layer) == (row.method, row.matrix, row.layer)]
        assert row.rank_energy_mean == pytest.approx(sum(values) / len(values))
        assert (row.rank_energy_min, row.rank_energy_max) == (min(values), max(values))
    assert len(by_layer) == 2 * 2 * 3
    assert len(pd.read_csv(out / "sweep.csv")) == 2 * 2 * 2 * 3
    # no intruders.csv yet (a study from before the sweep): placeholders, no exception
    write_weights(weights=paths["weights"], best=paths["best"], intruders=tmp_path / "absent.csv", tasks=["sst2"],
                  outputs=outputs)
    assert "results/tables/intruders.csv" in svg_strings(out / "sweep/sst2.svg")


def test_intruder_intervention_figure_and_table(tmp_path):
    """The table is the mean over runs per task x method x measure x λ; the figure draws every method and
    both panels (validation, forgetting), and says so when there is no table."""
    from ftdrift.report.frames import configure_methods
    from ftdrift.report.weights import write_intruder_intervention

    configure_methods({"methods": {"full": {}, "lora": {"peft": {"peft_type": "LORA", "r": 8}},
                                   "ia3": {"peft": {"peft_type": "IA3"}}},
                       "analysis": {"reference_method": "full"}})
    rows = []
    for method, slope in (("lora", 0.2), ("ia3", 0.1)):
        for lam in (1.0, 0.5, 0.0):
            run = {"task": "sst2", "method": method, "lr": "1e-3", "batch_size": 4, "seed": 1, "lambda": lam,
                   "n_examples": 8, "n_matrices": 4, "n_intruders": 3, "top_k": 10, "epsilon": 0.5}
            rows.append({**run, "measure": "validation", "probe_task": None, "metric": "accuracy",
                         "value": 0.8 - slope * (1 - lam), "baseline": None})
            rows.append({**run, "measure": "probe_transfer", "probe_task": "rte", "metric": "accuracy",
                         "value": 0.6 + slope * (1 - lam), "baseline": 0.7})
    pd.DataFrame(rows).to_csv(tmp_path / "intervention.csv", index=False)
    outputs = {"figure": tmp_path / "intervention.svg", "table": tmp_path / "table.csv"}
    write_intruder_intervention(table=tmp_path / "intervention.csv", outputs=outputs)
    table = pd.read_csv(outputs["table"])
    assert len(table) == 2 * 2 * 3
    got = table[(table.method == "lora") & (table.measure == "validation") & (table["lambda"] == 0.0)].iloc[0]
    assert got.value_mean == pytest.approx(0.6) and got.n_runs == 1
    text = svg_strings(outputs["figure"])
    assert "sst2: validation" in text and "forgetting: probe_transfer rte" in text
    assert "lora (LORA r=8)" in text and "ia3 (IA3)" in text  # the legend: every method drawn
    write_intruder_intervention(table=tmp_path / "missing.csv", outputs=outputs)
    assert "no intruder intervention" in svg_strings(outputs["figure"])
