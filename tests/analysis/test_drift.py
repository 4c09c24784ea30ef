"""ftdrift.analysis.drift on small stores written here: rows per step, layer, pooling and metric, and
refusals when the run and the base were taken on different probes or in different precisions."""

import numpy as np
import pytest

from ftdrift.analysis.drift import drift_table
from ftdrift.core.store import SnapshotStore, write_base

RUN = {"task": "sst2", "method": "lora", "lr": "1e-3", "batch_size": 4, "seed": 1}


def stores(tmp_path, base_precision="bf16", run_precision="bf16", run_probe=("a", "b", "c", "d", "e")):
    rng = np.random.default_rng(0)
    base = {"mean": rng.normal(size=(2, 5, 3)).astype(np.float32)}
    attrs = {"poolings": ["mean"], "probe_ids": ["a", "b", "c", "d", "e"], "layer_names": ["embeddings", "block_0"]}
    write_base(tmp_path / "base.zarr", base, {**attrs, "precision": base_precision})
    store = SnapshotStore(tmp_path / "run.zarr", attrs={**attrs, "probe_ids": list(run_probe), "run": RUN,
                                                        "precision": run_precision})
    store.append(0, base)
    store.append(5, {"mean": base["mean"] + rng.normal(size=base["mean"].shape).astype(np.float32)})
    return tmp_path / "base.zarr", tmp_path / "run.zarr"


def test_rows_and_identity_at_step_zero(tmp_path):
    table = drift_table(*stores(tmp_path), RUN, ["linear_cka", "cosine"])
    assert len(table) == 2 * 2 * 2  # steps x layers x metrics
    assert list(table.columns[:5]) == ["task", "method", "lr", "batch_size", "seed"]
    step0 = table[table.step == 0]
    assert np.allclose(step0.value, 1.0, atol=1e-6)
    assert (table[table.step == 5].value < 0.99).all()


def test_different_precisions_are_refused(tmp_path):
    with pytest.raises(ValueError, match="taken in bf16 but .* in fp32"):
        drift_table(*stores(tmp_path, base_precision="fp32"), RUN, ["linear_cka"])


def test_different_probe_sets_are_refused(tmp_path):
    with pytest.raises(ValueError, match="different probe sets"):
        drift_table(*stores(tmp_path, run_probe=("a", "b", "c", "d", "x")), RUN, ["linear_cka"])


def test_the_schema_offers_exactly_the_registered_metrics():
    """One registry: config/schema.yaml's drift-metric enum is the registry's keys."""
    from ftdrift.core.drift_metrics import DRIFT_METRICS
    from ftdrift.study.config import load_schema

    assert load_schema("schema.yaml")["definitions"]["drift_metric"]["enum"] == list(DRIFT_METRICS)


def test_bootstrap_replicates_of_the_final_snapshot(tmp_path):
    """Replicates: linear CKA of the last snapshot against the base on the same resampled probe rows,
    the same resamples for every run (fixed seed)."""
    from ftdrift.analysis.drift import drift_bootstrap
    from ftdrift.core.similarity import linear_cka, probe_resamples
    from ftdrift.core.store import read_base

    base_path, run_path = stores(tmp_path)
    table = drift_bootstrap(base_path, run_path, RUN, ["linear_cka", "cosine"], 5)
    assert len(table) == 2 * 5 and set(table.step) == {5} and set(table.metric) == {"linear_cka"}
    base = read_base(base_path)[0]["mean"]
    final = SnapshotStore(run_path, mode="r").read("mean")[1][-1]
    indices = probe_resamples(5, 5, seed=0)
    for layer in (0, 1):
        got = table[table.layer == layer].sort_values("replicate").value.to_numpy()
        want = [linear_cka(base[layer][i], final[layer][i]) for i in indices]
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert drift_bootstrap(base_path, run_path, RUN, ["cosine"], 5).empty
    assert drift_bootstrap(base_path, run_path, RUN, ["linear_cka"], 0).empty
