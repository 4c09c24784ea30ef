"""Zarr (v3) stores of pooled representations. Reading them needs no model libraries.

Base model, one group per task:
    <pooling>: [layer, example, hidden]
A fine-tuning run, one group with a snapshot axis:
    <pooling>: [snapshot, layer, example, hidden];  step: [snapshot]
Attributes: model, poolings, layer_names, probe_ids; a run's store also `committed_steps` (below).

Crash safety of a run's store. zarr 3's LocalStore writes every key (a chunk file, an array's or the
group's zarr.json) to a `*.partial` file and renames it into place, so each single key write is
atomic under SIGKILL, but an append is many of them (resize = rewrite of the array's zarr.json, then
the chunks). The one write that publishes a snapshot is the group attribute `committed_steps`
(the group's zarr.json, one atomic rename), made after every array holds the snapshot: a kill at any
earlier point leaves the committed snapshots as they were, and whatever the arrays hold past them is
ignored by readers and overwritten by the next append. Stores written before this attribute existed
are read from their `step` array, checked the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr

COMMITTED = "committed_steps"  # the group attribute that publishes snapshots (see the module docstring)


class SnapshotStoreError(ValueError):
    """A run's snapshot store is inconsistent: its steps are not strictly increasing, its arrays hold
    fewer snapshots than it lists, or its steps are not those its run's metrics.json recorded."""


def write_base(path: Path, pooled: dict[str, np.ndarray], attrs: dict) -> None:
    group = zarr.open_group(str(path), mode="w")
    for pooling, values in pooled.items():
        array = group.create_array(pooling, shape=values.shape, chunks=(1,) + values.shape[1:],
                                   dtype=values.dtype, dimension_names=("layer", "example", "hidden"))
        array[...] = values
    group.attrs.update(attrs)


def read_base(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    return {p: group[p][...] for p in attrs["poolings"]}, attrs


def recorded_snapshot_steps(metrics_path) -> list[int] | None:
    """The snapshot steps a finished run recorded: metrics.json's `meta.snapshot_steps` (written by
    ftdrift.training.recipe.save from the store it copied). None when `metrics_path` is None or the
    file predates that field."""
    if metrics_path is None:
        return None
    steps = json.loads(Path(metrics_path).read_text()).get("meta", {}).get("snapshot_steps")
    return None if steps is None else [int(s) for s in steps]


def check_steps(path, steps: list[int], expected: list[int] | None = None, source: str = "metrics.json") -> None:
    """Raise SnapshotStoreError naming the store `path` and the bad steps unless `steps` is strictly
    increasing and, where `expected` is given (the steps `source` recorded), equal to it."""
    bad = [(i, steps[i - 1], steps[i]) for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    if bad:
        where = ", ".join(f"step {b} at index {i} after {a}" for i, a, b in bad)
        raise SnapshotStoreError(
            f"snapshot store {path}: steps {steps} are not strictly increasing ({where}); a write was killed "
            "midway and a resume appended after it. Delete the store and re-run the job that wrote it")
    if expected is not None and list(steps) != list(expected):
        missing = sorted(set(expected) - set(steps))
        extra = sorted(set(steps) - set(expected))
        raise SnapshotStoreError(
            f"snapshot store {path}: steps {steps} differ from the {expected} that {source} (meta.snapshot_steps) "
            f"recorded (missing {missing}, not recorded {extra}); the store and the run's metrics do not match")


class SnapshotStore:
    """Append-only snapshots of one run; truncatable so a resumed run rewrites what it redoes.

    `steps()`, `read()` and every reader see only committed snapshots (module docstring), checked
    to be strictly increasing and held by every array; SnapshotStoreError otherwise.
    """

    def __init__(self, path: Path, attrs: dict | None = None, mode: str = "a",
                 expected_steps: list[int] | None = None, expected_source: str = "metrics.json"):
        """Open a store; with `attrs`, create it first if it does not exist yet (or its creation was
        killed before its attributes were written). With
        `expected_steps` (e.g. recorded_snapshot_steps(metrics.json)), check them at once.

        Raises SnapshotStoreError (naming the store and the steps) when the store is inconsistent."""
        self.path = Path(path)
        if attrs is not None and not self._created():
            group = zarr.open_group(str(self.path), mode="w")  # also clears what a killed creation left
            group.create_array("step", shape=(0,), chunks=(1024,), dtype="int64", dimension_names=("snapshot",))
            # committed in the same group write as the attributes: an empty store is a consistent one
            group.attrs.update({**attrs, COMMITTED: []})
        self.group = zarr.open_group(str(self.path), mode=mode)
        self.check(expected_steps, expected_source)

    def _created(self) -> bool:
        # creation writes the attributes last, in one write (after the `step` array): none, and it was killed midway
        meta = self.path / "zarr.json"
        return meta.is_file() and bool(json.loads(meta.read_text()).get("attributes"))

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    def steps(self) -> list[int]:
        """The committed snapshot steps, in order. SnapshotStoreError when they are not strictly
        increasing, or when the `step` array or a pooling array holds fewer snapshots or other steps."""
        recorded = self.group.attrs.get(COMMITTED)
        index = [int(s) for s in self.group["step"][...]]
        steps = index if recorded is None else [int(s) for s in recorded]  # no attribute: a store from before it
        check_steps(self.path, steps)
        if index[:len(steps)] != steps:
            raise SnapshotStoreError(f"snapshot store {self.path}: committed steps {steps} but its 'step' array "
                                     f"holds {index}")
        for pooling in self.group.attrs.get("poolings", []):
            if steps and (pooling not in self.group or self.group[pooling].shape[0] < len(steps)):
                held = self.group[pooling].shape[0] if pooling in self.group else 0
                raise SnapshotStoreError(f"snapshot store {self.path}: committed steps {steps} but pooling "
                                         f"'{pooling}' holds only {held} snapshots")
        return steps

    def check(self, expected_steps: list[int] | None = None, source: str = "metrics.json") -> list[int]:
        """The committed steps, checked (steps()) and, where given, equal to `expected_steps`."""
        steps = self.steps()
        check_steps(self.path, steps, expected_steps, source)
        return steps

    def _commit(self, steps: list[int]) -> None:
        # one atomic rename of the group's zarr.json: the only write that changes what readers see
        self.group.attrs.update({COMMITTED: [int(s) for s in steps]})

    def append(self, step: int, pooled: dict[str, np.ndarray]) -> None:
        """Add the snapshot of `step` (pooling -> [layer, example, hidden]) after the committed ones.

        Writes every array first, then commits: a kill before the commit leaves the store as it was.
        ValueError when `step` is not after the last committed step."""
        steps = self.steps()
        if steps and step <= steps[-1]:
            raise ValueError(f"snapshot store {self.path}: step {step} does not follow the last step {steps[-1]}")
        n = len(steps)
        for pooling, values in pooled.items():
            if pooling not in self.group:
                self.group.create_array(pooling, shape=(0,) + values.shape, chunks=(1, 1) + values.shape[1:],
                                        dtype=values.dtype,
                                        dimension_names=("snapshot", "layer", "example", "hidden"))
            array = self.group[pooling]
            array.resize((n + 1,) + values.shape)  # also drops what an uncommitted append left past n
            array[n] = values
        index = self.group["step"]
        index.resize((n + 1,))
        index[n] = step
        self._commit(steps + [step])

    def truncate_after(self, step: int) -> None:
        """Keep the snapshots up to `step`; also drop the temporary chunk files (`*.partial`) a
        write killed midway leaves behind (zarr writes each key through one). Commits first, then
        shrinks the arrays: a kill in between leaves arrays longer than the committed steps (ignored)."""
        for partial in self.path.rglob("*.partial"):
            partial.unlink(missing_ok=True)
        kept = [s for s in self.steps() if s <= step]
        self._commit(kept)
        self.group["step"].resize((len(kept),))
        for pooling in self.attrs["poolings"]:
            if pooling in self.group:
                array = self.group[pooling]
                array.resize((len(kept),) + array.shape[1:])

    def read(self, pooling: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps [snapshot] int64, representations [snapshot, layer, example, hidden]) of the committed snapshots."""
        steps = np.array(self.steps(), dtype=np.int64)
        return steps, self.group[pooling][: len(steps)]


def check_comparable(base_path, base_attrs: dict, run_path, run_attrs: dict) -> None:
    """A run's store and its task's base store can be compared (drift, the step-0 guard, live
    drift): the same probe examples in the same order and the same precision. ValueError naming
    both paths otherwise."""
    if run_attrs["probe_ids"] != base_attrs["probe_ids"]:
        raise ValueError(f"{run_path} and {base_path} were taken on different probe sets")
    if run_attrs.get("precision", "fp32") != base_attrs.get("precision", "fp32"):
        # e.g. the base extracted on a CPU (fp32), the run trained on a GPU (bf16 under 'auto')
        raise ValueError(f"{run_path} was taken in {run_attrs.get('precision')} but {base_path} in "
                         f"{base_attrs.get('precision')}: drift would include the rounding difference. Run "
                         "base_representations where the runs train, or set config key 'training.precision'")
