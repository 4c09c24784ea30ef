"""ftdrift.analysis.pairs on small snapshot stores written here: the seed floor and each method vs the
reference method, checked
against a naive linear CKA (explicit centring matrix, HSIC by hand), a naive bootstrap loop, step
alignment when a run stops early, header-only tables when there is nothing to pair; and the rules
plan their jobs (`snakemake -n` on the tiny config, no execution)."""

import json

import numpy as np
import pandas as pd
import pytest

from ftdrift.analysis import pairs
from ftdrift.core.similarity import probe_resamples
from ftdrift.core.store import SnapshotStore
from ftdrift.study.grid import Run
from ftdrift.testing import make_tiny_workdir, run_snakemake

N, D = 12, 6
ATTRS = {"poolings": ["mean", "last"], "probe_ids": [f"p{i}" for i in range(N)],
         "layer_names": ["embeddings", "block_0", "block_1"], "precision": "fp32"}
L = len(ATTRS["layer_names"])
SETTING = {"task": "sst2", "method": "lora", "lr": "1e-3", "batch_size": 4}


def naive_cka(x, y):
    """Biased linear CKA: HSIC(K, L) = tr(K H L H), H = I - 11'/n, on uncentred Grams."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    h = np.eye(len(x)) - np.ones((len(x), len(x))) / len(x)
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h)

    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def naive_cosine(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.mean([a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(x, y)])


def write_store(path, snapshots: dict[int, dict[str, np.ndarray]], attrs=None):
    store = SnapshotStore(path, attrs=attrs or ATTRS)
    for step, pooled in snapshots.items():
        store.append(step, pooled)
    return path


def random_run(rng, steps):
    return {step: {p: rng.normal(size=(L, N, D)).astype(np.float32) for p in ATTRS["poolings"]} for step in steps}


def write_metrics(path, status):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": {"status": status, "stopped_early": status == "stopped_early"}}))
    return path


@pytest.fixture
def seed_runs(tmp_path):
    """Seeds 1, 2 (stopped early: steps 0 and 5 of 0, 5, 10) and 3 (diverged) of one setting."""
    rng = np.random.default_rng(0)
    data = {1: random_run(rng, [0, 5, 10]), 2: random_run(rng, [0, 5]), 3: random_run(rng, [0, 5, 10])}
    status = {1: "completed", 2: "stopped_early", 3: "diverged"}
    stores = {s: write_store(tmp_path / f"seed{s}.zarr", data[s]) for s in data}
    metrics = {s: write_metrics(tmp_path / f"seed{s}" / "metrics.json", status[s]) for s in data}
    return data, stores, metrics


def test_seed_floor_matches_naive_cka_and_aligns_steps(seed_runs):
    data, stores, metrics = seed_runs
    table = pairs.seed_floor_table(SETTING, stores, metrics, ["linear_cka", "cosine"], bootstrap_resamples=0)
    assert list(table.columns) == pairs.SEED_FLOOR_COLUMNS
    # the diverged seed 3 is left out; seed 2 stopped at step 5, so step 10 is not compared
    assert set(zip(table.seed_a, table.seed_b)) == {(1, 2)}
    assert sorted(table.step.unique()) == [0, 5]
    assert len(table) == 2 * L * 2 * 2  # steps x layers x poolings x metrics
    assert (table.task == "sst2").all() and (table.lr == "1e-3").all() and (table.batch_size == 4).all()
    for row in table.itertuples():
        x, y = data[1][row.step][row.pooling][row.layer], data[2][row.step][row.pooling][row.layer]
        want = naive_cka(x, y) if row.metric == "linear_cka" else naive_cosine(x, y)
        assert row.value == pytest.approx(want, abs=1e-9)
        assert row.layer_name == ATTRS["layer_names"][row.layer]
    assert table.bootstrap_se.isna().all()  # 0 resamples: no interval


def test_bootstrap_se_matches_a_naive_loop_at_the_last_common_step(seed_runs):
    data, stores, metrics = seed_runs
    n_resamples = 5
    table = pairs.seed_floor_table(SETTING, stores, metrics, ["linear_cka", "cosine"], n_resamples)
    with_se = table[table.bootstrap_se.notna()]
    assert set(with_se.metric) == {"linear_cka"} and set(with_se.step) == {5}
    assert len(with_se) == L * 2
    indices = probe_resamples(N, n_resamples, seed=0)
    for row in with_se.itertuples():
        x, y = data[1][5][row.pooling][row.layer], data[2][5][row.pooling][row.layer]
        replicates = [naive_cka(x[idx], y[idx]) for idx in indices]
        assert row.bootstrap_se == pytest.approx(np.std(replicates, ddof=1), rel=1e-7)


def test_seed_floor_with_one_usable_seed_is_header_only(seed_runs, tmp_path):
    _, stores, metrics = seed_runs
    table = pairs.seed_floor_table(SETTING, {s: stores[s] for s in (1, 3)}, {s: metrics[s] for s in (1, 3)},
                                   ["linear_cka"])
    assert table.empty and list(table.columns) == pairs.SEED_FLOOR_COLUMNS


def test_different_probe_sets_are_refused(tmp_path):
    rng = np.random.default_rng(1)
    a = write_store(tmp_path / "a.zarr", random_run(rng, [0]))
    b = write_store(tmp_path / "b.zarr", random_run(rng, [0]),
                    {**ATTRS, "probe_ids": ATTRS["probe_ids"][::-1]})
    with pytest.raises(ValueError, match="different probe sets"):
        pairs.compare_stores(a, b, ["linear_cka"])


# the chosen settings of the comparisons below: the reference and three compared methods
CHOSEN = {("full", "1e-4", 8), ("lora", "1e-3", 4), ("dora_r8", "2e-3", 4), ("ia3", "5e-3", 8)}


def write_chosen(tmp_path, runs: list[tuple]):
    """chosen.csv of the chosen settings (CHOSEN): the usable ones of `runs` (method, lr, bs, seed, status),
    as tables.chosen_runs selects them."""
    pd.DataFrame([{"task": "sst2", "method": m, "lr": lr, "batch_size": bs, "seed": s}
                  for m, lr, bs, s, st in runs if (m, lr, bs) in CHOSEN and st != "diverged"],
                 columns=["task", "method", "lr", "batch_size", "seed"]).to_csv(tmp_path / "chosen.csv", index=False)
    return tmp_path / "chosen.csv"


def test_method_vs_reference_per_step_and_layer_by_layer(tmp_path):
    rng = np.random.default_rng(2)
    full, lora = random_run(rng, [0, 4, 8]), random_run(rng, [0, 4])
    lora_other_seed = random_run(rng, [0, 4])
    stores = {("full", "1e-4", 8, 1): write_store(tmp_path / "full1.zarr", full),
              ("lora", "1e-3", 4, 1): write_store(tmp_path / "lora1.zarr", lora),
              ("lora", "1e-3", 4, 2): write_store(tmp_path / "lora2.zarr", lora_other_seed)}
    # seed 2 of full diverged: only seed 1 pairs; a non-chosen LoRA setting is ignored
    chosen = write_chosen(tmp_path, [("full", "1e-4", 8, 1, "completed"), ("full", "1e-4", 8, 2, "diverged"),
                                     ("lora", "1e-3", 4, 1, "completed"), ("lora", "1e-3", 4, 2, "completed"),
                                     ("lora", "5e-3", 4, 1, "completed")])
    per_step, layers = pairs.method_similarity_tables("sst2", "lora", "full", chosen, stores, ["linear_cka"], 4)
    assert list(per_step.columns) == pairs.METHOD_PAIR_COLUMNS
    assert list(layers.columns) == pairs.LAYER_COLUMNS
    assert set(per_step.seed) == {1} and sorted(per_step.step.unique()) == [0, 4]
    assert per_step.iloc[0][["reference", "method", "lr_ref", "batch_size_ref", "lr_method",
                             "batch_size_method"]].tolist() == ["full", "lora", "1e-4", 8, "1e-3", 4]
    for row in per_step.itertuples():
        assert row.value == pytest.approx(naive_cka(full[row.step][row.pooling][row.layer],
                                                    lora[row.step][row.pooling][row.layer]), abs=1e-9)
    assert per_step[per_step.step == 4].bootstrap_se.notna().all()
    assert per_step[per_step.step == 0].bootstrap_se.isna().all()
    # the heatmap: every layer pair of each run's own last snapshot (full: step 8, LoRA: step 4)
    assert len(layers) == 2 * L * L
    assert set(layers.reference) == {"full"} and set(layers.method) == {"lora"}
    for row in layers.itertuples():
        want = naive_cka(full[8][row.pooling][row.layer_ref], lora[4][row.pooling][row.layer_method])
        assert row.value == pytest.approx(want, abs=1e-9)
        assert row.layer_name_method == ATTRS["layer_names"][row.layer_method]


def test_every_compared_method_gets_its_own_pair_with_the_reference(tmp_path):
    """Three methods besides the reference (seeds 1 and 2 each): one pair table per method, each value the
    naive CKA of that method's run and the reference's run of the same seed; the reference is never
    compared with itself."""
    rng = np.random.default_rng(7)
    runs = {(m, lr, bs, seed): random_run(rng, [0, 3, 6]) for m, lr, bs in sorted(CHOSEN) for seed in (1, 2)}
    stores = {key: write_store(tmp_path / f"{key[0]}{key[3]}.zarr", data) for key, data in runs.items()}
    chosen = write_chosen(tmp_path, [(*key, "completed") for key in runs])
    settings = {m: (lr, bs) for m, lr, bs in CHOSEN}
    for method in ("lora", "dora_r8", "ia3"):
        per_step, layers = pairs.method_similarity_tables("sst2", method, "full", chosen, stores,
                                                          ["linear_cka", "cosine"])
        assert set(per_step.method) == {method} and set(per_step.reference) == {"full"}
        assert set(per_step.seed) == {1, 2} and len(per_step) == 2 * 3 * L * 2 * 2  # seeds, steps, layers, ...
        for row in per_step.itertuples():
            x = runs[("full", *settings["full"], row.seed)][row.step][row.pooling][row.layer]
            y = runs[(method, *settings[method], row.seed)][row.step][row.pooling][row.layer]
            want = naive_cka(x, y) if row.metric == "linear_cka" else naive_cosine(x, y)
            assert row.value == pytest.approx(want, abs=1e-9)
        for row in layers.itertuples():
            x = runs[("full", *settings["full"], row.seed)][6][row.pooling][row.layer_ref]
            y = runs[(method, *settings[method], row.seed)][6][row.pooling][row.layer_method]
            assert row.value == pytest.approx(naive_cka(x, y), abs=1e-9)
    with pytest.raises(ValueError, match="reference method"):
        pairs.method_similarity_tables("sst2", "full", "full", chosen, stores, ["linear_cka"])


def test_paths_and_inputs_of_the_comparisons():
    assert pairs.method_similarity_paths([("sst2", "lora"), ("sst2", "ia3"), ("rte", "lora"), ("rte", "ia3")]) == [
        "results/similarity/sst2/lora.csv", "results/similarity/sst2/lora_layers.csv",
        "results/similarity/sst2/ia3.csv", "results/similarity/sst2/ia3_layers.csv",
        "results/similarity/rte/lora.csv", "results/similarity/rte/lora_layers.csv",
        "results/similarity/rte/ia3.csv", "results/similarity/rte/ia3_layers.csv"]
    runs = [Run("sst2", "full", "1e-4", 8, 1), Run("sst2", "lora", "1e-3", 4, 1), Run("sst2", "ia3", "1e-3", 4, 1),
            Run("rte", "lora", "1e-3", 4, 1)]
    assert pairs.pair_runs(runs, "sst2", "ia3", "full") == [runs[0], runs[2]]
    with pytest.raises(ValueError, match="is the reference method"):
        pairs.pair_runs(runs, "sst2", "full", "full")


def test_layer_matrix_of_a_run_with_itself_has_ones_on_the_diagonal_and_zero_for_constant_layers():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, N, D))
    x[2] = 1.0  # a layer without variance: CKA undefined, reported as 0.0 like linear_cka
    matrix = pairs.layer_cka_matrix(x, x)
    assert np.allclose(np.diag(matrix)[:2], 1.0) and np.allclose(matrix[2], 0.0) and np.allclose(matrix[:, 2], 0.0)
    assert matrix[0, 1] == pytest.approx(naive_cka(x[0], x[1]), abs=1e-12)


@pytest.mark.parametrize("runs, why", [
    ([("full", "1e-4", 8, 1, "completed"), ("lora", "1e-3", 4, 2, "completed")], "share no seed"),
    ([("full", "1e-4", 8, 1, "diverged"), ("lora", "1e-3", 4, 1, "completed")], "no chosen full setting"),
])
def test_no_shared_seed_gives_header_only_tables(tmp_path, caplog, runs, why):
    chosen = write_chosen(tmp_path, runs)
    with caplog.at_level("INFO", logger="ftdrift.analysis.pairs"):
        per_step, layers = pairs.method_similarity_tables("sst2", "lora", "full", chosen, {}, ["linear_cka"], 10)
    assert per_step.empty and list(per_step.columns) == pairs.METHOD_PAIR_COLUMNS
    assert layers.empty and list(layers.columns) == pairs.LAYER_COLUMNS
    assert why in caplog.text


def test_a_missing_method_gives_header_only_tables(tmp_path, caplog):
    chosen = write_chosen(tmp_path, [("full", "1e-4", 8, 1, "completed")])
    with caplog.at_level("INFO", logger="ftdrift.analysis.pairs"):
        per_step, layers = pairs.method_similarity_tables("sst2", "lora", "full", chosen, {}, ["linear_cka"])
    assert per_step.empty and layers.empty and "no chosen lora setting" in caplog.text


def test_settings_with_seeds_and_their_paths():
    runs = [Run("sst2", "full", "1e-4", 8, 1), Run("sst2", "full", "1e-4", 8, 2), Run("sst2", "lora", "1e-3", 4, 1),
            Run("rte", "lora", "1e-3", 4, 3), Run("rte", "lora", "1e-3", 4, 1)]
    assert pairs.settings_with_seeds(runs) == [
        {"task": "sst2", "method": "full", "lr": "1e-4", "batch_size": 8, "seeds": [1, 2]},
        {"task": "rte", "method": "lora", "lr": "1e-3", "batch_size": 4, "seeds": [1, 3]}]
    assert pairs.seed_floor_paths(runs) == ["results/seed_floor/sst2/full/lr1e-4_bs8.csv",
                                            "results/seed_floor/rte/lora/lr1e-3_bs4.csv"]
    with pytest.raises(ValueError, match="at least 2 seeds"):
        pairs.seed_floor_setting(runs, {"task": "sst2", "method": "lora", "lr": "1e-3", "batch_size": "4"})


def test_the_rules_plan_seed_floor_and_method_similarity_jobs(tmp_path):
    """Dry run only. results/tables/chosen.csv is a stub and --allowed-rules keeps rule choose_settings (tested
    elsewhere) out, so this plans just the new rules and what they need from training."""
    workdir = make_tiny_workdir(tmp_path, tasks=["sst2"], grid={
        "seeds": [1, 2], "batch_sizes": [4],
        "learning_rates": {"full": {"classification": [1e-3], "extractive_qa": [1e-3]},
                           "lora": {"classification": [5e-3], "extractive_qa": [5e-3]}}})
    (workdir / "results/tables").mkdir(parents=True)
    (workdir / "results/tables/chosen.csv").touch()
    targets = ["results/seed_floor/sst2/full/lr1e-3_bs4.csv", "results/seed_floor/sst2/lora/lr5e-3_bs4.csv",
               "results/similarity/sst2/lora.csv", "results/similarity/sst2/lora_layers.csv"]
    dry = run_snakemake(workdir, "-n", "--allowed-rules", "seed_floor", "method_similarity", "finetune",
                        "prepare_data", "base_representations", "--", *targets)
    stats = dry.stdout.split("Job stats:")[1].split("Reasons:")[0]
    counts = {words[0]: int(words[1]) for words in map(str.split, stats.splitlines())
              if len(words) == 2 and words[1].isdigit() and not words[0].endswith(":")}
    assert counts == {"prepare_data": 1, "base_representations": 1, "finetune": 4, "seed_floor": 2,
                      "method_similarity": 1, "total": 9}
    assert "results/runs/sst2/lora/lr5e-3_bs4_seed2/metrics.json" in dry.stdout
    off_grid = run_snakemake(workdir, "-n", "results/seed_floor/sst2/full/lr0.001_bs4.csv", check=False)
    assert off_grid.returncode != 0 and "at least 2 seeds" in off_grid.stdout + off_grid.stderr
    itself = run_snakemake(workdir, "-n", "results/similarity/sst2/full.csv", check=False)
    assert itself.returncode != 0 and "is the reference method" in itself.stdout + itself.stderr
