"""ftdrift.core.store.SnapshotStore under SIGKILL, and the store check every reader enforces.

The kill tests run a real child process that writes to a store and SIGKILLs itself at one of zarr's
key writes (every chunk file and zarr.json goes through zarr.storage._local._put): before the k-th
write, or halfway through it (a `*.partial` file left, as zarr's atomic write leaves one). k runs over
every write of the operation (an append, a resume's truncation, the store's creation), until the child
finishes unkilled. Then the test resumes as the recipe and the snapshot callback do after a restart
(open, truncate_after(checkpoint step), the snapshots it redoes) and checks the steps and every
snapshot's values against the generator that wrote them: the killed attempt's data must never survive
under a step the resume redid."""

import inspect
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr

from ftdrift.analysis import pairs
from ftdrift.analysis.drift import drift_bootstrap, drift_table
from ftdrift.core.store import SnapshotStore, SnapshotStoreError, write_base

ATTRS = {"poolings": ["mean", "last"], "probe_ids": ["a", "b", "c", "d"], "layer_names": ["embeddings", "block_0"],
         "precision": "fp32"}
RUN = {"task": "sst2", "method": "lora", "lr": "1e-3", "batch_size": 4, "seed": 1}
SHAPE = (2, 4, 3)  # layer, example, hidden


def snapshot(step: int, attempt: int) -> dict[str, np.ndarray]:
    """The representations `attempt` (1 = the killed run, 2 = its resume) writes at `step`: distinct per
    step, attempt and pooling, so a snapshot read back identifies who wrote it."""
    return {pooling: np.random.default_rng([step, attempt, k]).normal(size=SHAPE).astype(np.float32)
            for k, pooling in enumerate(ATTRS["poolings"])}


# the child: the operation under test with zarr's key writes counted, the k-th one SIGKILLing the process
# (before it, or halfway through). create: the store's creation and its step-0 snapshot; append: the
# step-4 snapshot after intact steps 0 and 2; truncate: a resume's truncation of intact 0, 2, 4 to step 2
CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import zarr.storage._local as local
    from ftdrift.core.store import SnapshotStore
    {shared}  # ATTRS, SHAPE and snapshot(), as this test module defines them (run_child inserts them)

    path, phase, mode, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    real_put, writes = local._put, []

    def put(target, value, exclusive=False):
        writes.append(str(target))
        if len(writes) == kill_at:
            if mode == "midway":  # the temporary file zarr writes before its rename, half written
                data = bytes(value.as_buffer_like())
                target.parent.mkdir(parents=True, exist_ok=True)
                target.with_suffix(".0123abcd.partial").write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return real_put(target, value, exclusive=exclusive)

    if phase == "create":
        local._put = put
        SnapshotStore(path, attrs=ATTRS).append(0, snapshot(0, attempt=1))
    else:
        store = SnapshotStore(path, attrs=ATTRS)
        for step in (0, 2, 4) if phase == "truncate" else (0, 2):
            store.append(step, snapshot(step, attempt=1))
        local._put = put
        if phase == "append":
            store.append(4, snapshot(4, attempt=1))
        else:  # a resume from the step-2 checkpoint drops step 4
            store.truncate_after(2)
    print(len(writes))
""")


def run_child(tmp_path, path, phase: str, mode: str, kill_at: int) -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    shared = f"ATTRS = {ATTRS!r}\nSHAPE = {SHAPE!r}\n{inspect.getsource(snapshot)}"
    script.write_text(CHILD.replace("{shared}", shared))
    return subprocess.run([sys.executable, str(script), str(path), phase, mode, str(kill_at)],
                          capture_output=True, text=True, timeout=60)


def resume_and_check(path, checkpoint: int, checkpoint_attempts: set[int]) -> None:
    """What the recipe and SnapshotCallback do after a restart from the checkpoint at `checkpoint`
    (open with attrs, truncate_after, snapshot that step if missing, then the later ones), then the
    store checked: steps [0, 2, 4, 6], steps before the checkpoint from the killed attempt (1), after it
    from the resume (2), and at it from one of `checkpoint_attempts` (every pooling from the same)."""
    store = SnapshotStore(path, attrs=ATTRS)
    store.truncate_after(checkpoint)
    for step in (0, 2, 4, 6):
        if step >= checkpoint and step not in store.steps():
            store.append(step, snapshot(step, attempt=2))
    reader = SnapshotStore(path, mode="r", expected_steps=[0, 2, 4, 6])
    assert reader.steps() == [0, 2, 4, 6]
    assert list(zarr.open_group(str(path), mode="r")["step"][...]) == [0, 2, 4, 6]  # the raw index as well
    data = {pooling: reader.read(pooling) for pooling in ATTRS["poolings"]}
    at_checkpoint = [a for a in sorted(checkpoint_attempts)
                     if all(np.array_equal(values[[0, 2, 4, 6].index(checkpoint)], snapshot(checkpoint, a)[pooling])
                            for pooling, (_, values) in data.items())]
    assert at_checkpoint, f"{path}: the snapshot at the checkpoint step {checkpoint} is no attempt's"
    for pooling, (steps, values) in data.items():
        assert steps.tolist() == [0, 2, 4, 6] and values.shape == (4,) + SHAPE
        for i, step in enumerate(steps.tolist()):
            attempt = 1 if step < checkpoint else 2 if step > checkpoint else at_checkpoint[0]
            np.testing.assert_array_equal(values[i], snapshot(step, attempt)[pooling],
                                          err_msg=f"{path} {pooling} step {step}")


@pytest.mark.parametrize("phase,mode", [("append", "before"), ("append", "midway"), ("truncate", "before"),
                                        ("create", "before")])
def test_a_kill_at_any_write_then_a_resume_leaves_the_right_snapshots(tmp_path, phase, mode):
    """SIGKILL at every key write of an append (or a resume's truncation, or the store's creation), then
    a resumed run: steps [0, 2, 4, 6], each holding its own data. Before the fix, a kill between the
    `step` array's resize and its value left a fill 0 that the resume kept: steps [0, 2, 0, 4, 6]."""
    # the step-2 checkpoint's snapshot was intact before the kill; a job killed while creating its store
    # restarts from scratch, its step-0 snapshot either committed (attempt 1) or redone (attempt 2)
    checkpoint, attempts = (0, {1, 2}) if phase == "create" else (2, {1})
    for kill_at in range(1, 50):
        path = tmp_path / f"{phase}-{mode}-{kill_at}.zarr"
        child = run_child(tmp_path, path, phase, mode, kill_at)
        assert child.returncode in (-9, 0), child.stderr
        resume_and_check(path, checkpoint, attempts)
        if child.returncode == 0:  # the operation finished before write `kill_at`: every point was covered
            assert int(child.stdout) == kill_at - 1 >= 3, child.stdout
            break
    else:
        pytest.fail("the child was killed at 49 writes: the loop never reached the end of the operation")


# --------------------------------------------------------------------------- #
# the check every reader enforces
# --------------------------------------------------------------------------- #
def legacy_store(path, steps: list[int]):
    """A store as the code before `committed_steps` wrote it (the step array is the index), holding
    `steps` as given: [0, 2, 0, 4, 6] is what a kill inside its append and a resume left."""
    group = zarr.open_group(str(path), mode="w")
    group.create_array("step", shape=(len(steps),), chunks=(1024,), dtype="int64", dimension_names=("snapshot",))
    group["step"][...] = np.array(steps)
    for pooling in ATTRS["poolings"]:
        array = group.create_array(pooling, shape=(len(steps),) + SHAPE, chunks=(1, 1) + SHAPE[1:], dtype="float32")
        array[...] = np.stack([snapshot(s, attempt=1)[pooling] for s in steps])
    group.attrs.update({**ATTRS, "run": RUN})
    return path


def metrics_json(path, steps):
    path.write_text(json.dumps({"meta": {"status": "completed", "snapshot_steps": steps}}))
    return path


@pytest.fixture
def base(tmp_path):
    write_base(tmp_path / "base.zarr", snapshot(0, attempt=1), ATTRS)
    return tmp_path / "base.zarr"


def test_readers_refuse_steps_that_do_not_increase(tmp_path, base):
    bad = legacy_store(tmp_path / "bad.zarr", [0, 2, 0, 4, 6])
    good = legacy_store(tmp_path / "good.zarr", [0, 2, 4, 6])
    message = rf"{bad}: steps \[0, 2, 0, 4, 6\] are not strictly increasing \(step 0 at index 2 after 2\)"
    with pytest.raises(SnapshotStoreError, match=message):
        drift_table(base, bad, RUN, ["linear_cka"])
    with pytest.raises(SnapshotStoreError, match=message):
        drift_bootstrap(base, bad, RUN, ["linear_cka"], 3)
    with pytest.raises(SnapshotStoreError, match=message):
        pairs.compare_stores(good, bad, ["linear_cka"])
    with pytest.raises(SnapshotStoreError, match=message):
        pairs.final_layer_matrix(bad, good)
    with pytest.raises(SnapshotStoreError, match=message):
        SnapshotStore(bad).truncate_after(2)  # the writer too: a resume must not build on it
    # a store written before `committed_steps` existed, with sound steps, still reads
    table = drift_table(base, good, RUN, ["linear_cka"])
    assert sorted(set(table.step)) == [0, 2, 4, 6]
    assert np.allclose(table[table.step == 0].value, 1.0, atol=1e-6)


def test_readers_refuse_steps_other_than_metrics_json_recorded(tmp_path, base):
    store = SnapshotStore(tmp_path / "run.zarr", attrs={**ATTRS, "run": RUN})
    for step in (0, 2, 4):
        store.append(step, snapshot(step, attempt=1))
    other = legacy_store(tmp_path / "other.zarr", [0, 2, 4])
    recorded = metrics_json(tmp_path / "metrics.json", [0, 2, 4, 6])
    matching = metrics_json(tmp_path / "matching.json", [0, 2, 4])
    message = rf"{store.path}: steps \[0, 2, 4\] differ from the \[0, 2, 4, 6\] that {recorded}.*missing \[6\]"
    with pytest.raises(SnapshotStoreError, match=message):
        drift_table(base, store.path, RUN, ["linear_cka"], metrics_path=recorded)
    with pytest.raises(SnapshotStoreError, match=message):
        pairs.compare_stores(store.path, other, ["linear_cka"], metrics_paths=(recorded, None))
    with pytest.raises(SnapshotStoreError, match=message):
        pairs.seed_floor_table({"task": "sst2", "method": "lora", "lr": "1e-3", "batch_size": 4},
                               {1: store.path, 2: other}, {1: recorded, 2: matching}, ["linear_cka"])
    assert sorted(set(drift_table(base, store.path, RUN, ["linear_cka"], metrics_path=matching).step)) == [0, 2, 4]
    assert len(pairs.compare_stores(store.path, other, ["linear_cka"], metrics_paths=(matching, matching)))


def test_an_append_must_follow_the_last_step(tmp_path):
    store = SnapshotStore(tmp_path / "run.zarr", attrs=ATTRS)
    store.append(0, snapshot(0, attempt=1))
    store.append(2, snapshot(2, attempt=1))
    with pytest.raises(ValueError, match=r"step 2 does not follow the last step 2"):
        store.append(2, snapshot(2, attempt=2))
    assert store.steps() == [0, 2]
