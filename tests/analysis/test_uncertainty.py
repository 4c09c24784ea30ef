"""ftdrift.analysis.uncertainty: the seed floor's tables and the probe-bootstrap intervals of seed and
layer means, against sums written out here."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from ftdrift.analysis import uncertainty

Z90 = norm.ppf(0.95)


def runs_frame(statuses: dict) -> pd.DataFrame:
    return pd.DataFrame([{"task": "sst2", "method": m, "lr": lr, "batch_size": 8, "seed": s, "status": st}
                         for (m, lr, s), st in statuses.items()])


def pair_csv(tmp_path, name, rows) -> str:
    path = tmp_path / f"{name}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def pair_rows(method, lr, a, b, values, steps=(0, 10)):
    """values[step][layer] for one seed pair."""
    return [{"task": "sst2", "method": method, "lr": lr, "batch_size": 8, "seed_a": a, "seed_b": b, "step": step,
             "layer": layer, "layer_name": f"block_{layer}", "pooling": "mean", "metric": "linear_cka", "value": v,
             "bootstrap_se": np.nan}
            for step, layer_values in zip(steps, values) for layer, v in enumerate(layer_values)]


def test_seed_floor_averages_usable_pairs_and_gives_each_comparison_its_larger_floor(tmp_path):
    runs = runs_frame({("full", "1e-5", 1): "completed", ("full", "1e-5", 2): "completed",
                       ("full", "1e-5", 3): "diverged", ("lora", "1e-4", 1): "completed",
                       ("lora", "1e-4", 2): "stopped_early"})
    paths = [pair_csv(tmp_path, "full12", pair_rows("full", "1e-5", 1, 2, [[1, 1], [0.9, 0.7]])),
             pair_csv(tmp_path, "full13", pair_rows("full", "1e-5", 1, 3, [[1, 1], [0.1, 0.1]])),  # diverged seed 3
             pair_csv(tmp_path, "lora12", pair_rows("lora", "1e-4", 1, 2, [[1, 1], [0.98, 0.96]]))]
    floor = uncertainty.seed_floor_table(paths, runs)
    full_final = floor[(floor.method == "full") & floor.final].sort_values("layer")
    assert list(full_final.value) == pytest.approx([0.9, 0.7]) and set(full_final.n_pairs) == {1}
    assert len(floor[~floor.final]) == 2 * 2 * 2  # settings x steps x layers
    chosen = pd.DataFrame([{"task": "sst2", "method": "full", "lr": "1e-5", "batch_size": 8},
                           {"task": "sst2", "method": "lora", "lr": "1e-4", "batch_size": 8}])
    # full: mean over layers of 1 - CKA = (0.1 + 0.3) / 2 = 0.2; LoRA: (0.02 + 0.04) / 2 = 0.03
    assert uncertainty.comparison_floors(floor, chosen, "linear_cka", "mean", "full") == \
        {("lora", "sst2"): pytest.approx(0.2)}
    layers = chosen.merge(pd.DataFrame({"layer": [0, 1]}), how="cross")
    assert list(uncertainty.layer_floor(layers, floor, "linear_cka", "mean")) == pytest.approx([0.9, 0.7, 0.98, 0.96])
    one_seed = chosen.assign(lr=["3e-5", "1e-4"])  # full's chosen setting has no seed pair
    assert math.isnan(uncertainty.comparison_floors(floor, one_seed, "linear_cka", "mean", "full")[("lora", "sst2")])
    # a third method without a seed floor: its comparison has none, the others keep theirs
    three = pd.concat([chosen, pd.DataFrame([{"task": "sst2", "method": "ia3", "lr": "1e-3", "batch_size": 8}])])
    floors = uncertainty.comparison_floors(floor, three, "linear_cka", "mean", "full", methods=["lora", "ia3"])
    assert floors[("lora", "sst2")] == pytest.approx(0.2) and math.isnan(floors[("ia3", "sst2")])


def test_probe_intervals_of_seed_and_layer_means():
    rng = np.random.default_rng(0)
    reps = {seed: rng.normal(0.9, 0.01, size=(3, 2)) for seed in (1, 2)}  # [replicate, layer] per run
    boot = pd.DataFrame([{"task": "sst2", "method": "full", "lr": "1e-5", "batch_size": 8, "seed": seed, "step": 10,
                          "layer": layer, "pooling": "mean", "metric": "linear_cka", "replicate": r,
                          "value": reps[seed][r, layer]}
                         for seed in (1, 2) for r in range(3) for layer in range(2)])
    chosen = pd.DataFrame([{"task": "sst2", "method": "full", "lr": "1e-5", "batch_size": 8, "seed": s} for s in (1, 2)])
    layers = pd.DataFrame([{"task": "sst2", "method": "full", "layer": 1, "value_mean": 0.5}])
    got = uncertainty.layer_probe_intervals(boot, chosen, layers, "linear_cka", "mean", 0.9).iloc[0]
    sd = np.std((reps[1][:, 1] + reps[2][:, 1]) / 2, ddof=1)  # the seed mean's replicates
    assert (got.probe_ci_low, got.probe_ci_high) == pytest.approx((0.5 - Z90 * sd, 0.5 + Z90 * sd))
    best = pd.DataFrame([{"task": "sst2", "method": "full", "drift_mean": 0.1}])
    got = uncertainty.drift_probe_intervals(boot, chosen, best, "linear_cka", "mean", 0.9).iloc[0]
    drift = 1 - (reps[1].mean(axis=1) + reps[2].mean(axis=1)) / 2  # seed mean of each run's layer mean
    sd = np.std(drift, ddof=1)
    assert (got.drift_probe_ci_low, got.drift_probe_ci_high) == pytest.approx((0.1 - Z90 * sd, 0.1 + Z90 * sd))
    none = uncertainty.drift_probe_intervals(boot.iloc[:0], chosen, best, "linear_cka", "mean", 0.9)
    assert none.isna().all().all()


def test_the_final_floor_takes_each_pair_at_its_own_last_step(tmp_path):
    """Seed 1 stopped early (step 10), seeds 2 and 3 ran to step 20: the final floor averages pair (1, 2) and
    (1, 3) at step 10 with pair (2, 3) at step 20, not pair (2, 3) alone."""
    runs = runs_frame({("full", "1e-5", s): "completed" for s in (1, 2, 3)})
    paths = [pair_csv(tmp_path, "p12", pair_rows("full", "1e-5", 1, 2, [[1.0], [0.8]])),
             pair_csv(tmp_path, "p13", pair_rows("full", "1e-5", 1, 3, [[1.0], [0.6]])),
             pair_csv(tmp_path, "p23", pair_rows("full", "1e-5", 2, 3, [[1.0], [0.9], [0.7]], steps=(0, 10, 20)))]
    floor = uncertainty.seed_floor_table(paths, runs)
    final = uncertainty.final_floor(floor, "linear_cka", "mean")
    assert len(final) == 1 and final.value.iloc[0] == pytest.approx((0.8 + 0.6 + 0.7) / 3)
    assert (final.n_pairs.iloc[0], final.value_min.iloc[0], final.step.iloc[0]) == (3, pytest.approx(0.6), 20)
    at_20 = floor[~floor.final & (floor.step == 20)]
    assert list(at_20.n_pairs) == [1]  # per step, only the pair that got there
