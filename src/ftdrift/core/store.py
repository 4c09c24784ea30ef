"""Zarr (v3) stores of pooled representations. Reading them needs no model libraries.

Base model, one group per task:
    <pooling>: [layer, example, hidden]
A fine-tuning run, one group with a snapshot axis:
    <pooling>: [snapshot, layer, example, hidden];  step: [snapshot]
Attributes: model, poolings, layer_names, probe_ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr


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


class SnapshotStore:
    """Append-only snapshots of one run; truncatable so a resumed run rewrites what it redoes."""

    def __init__(self, path: Path, attrs: dict | None = None, mode: str = "a"):
        """Open a store; with `attrs`, create it first if it does not exist yet."""
        self.path = Path(path)
        if attrs is not None and not (self.path / "zarr.json").exists():
            group = zarr.open_group(str(self.path), mode="w")
            group.create_array("step", shape=(0,), chunks=(1024,), dtype="int64", dimension_names=("snapshot",))
            group.attrs.update(attrs)
        self.group = zarr.open_group(str(self.path), mode=mode)

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    def steps(self) -> list[int]:
        return [int(s) for s in self.group["step"][...]]

    def append(self, step: int, pooled: dict[str, np.ndarray]) -> None:
        n = len(self.steps())
        for pooling, values in pooled.items():
            if pooling not in self.group:
                self.group.create_array(pooling, shape=(0,) + values.shape, chunks=(1, 1) + values.shape[1:],
                                        dtype=values.dtype,
                                        dimension_names=("snapshot", "layer", "example", "hidden"))
            array = self.group[pooling]
            array.resize((n + 1,) + values.shape)
            array[n] = values
        # the step index is written last: a snapshot only counts once its data is complete
        self.group["step"].resize((n + 1,))
        self.group["step"][n] = step

    def truncate_after(self, step: int) -> None:
        """Keep the snapshots up to `step`; also drop the temporary chunk files (`*.partial`) a
        write killed midway leaves behind (zarr writes each chunk through one)."""
        for partial in self.path.rglob("*.partial"):
            partial.unlink(missing_ok=True)
        keep = sum(1 for s in self.steps() if s <= step)
        self.group["step"].resize((keep,))
        for pooling in self.attrs["poolings"]:
            if pooling in self.group:
                array = self.group[pooling]
                array.resize((keep,) + array.shape[1:])

    def read(self, pooling: str) -> tuple[np.ndarray, np.ndarray]:
        steps = self.group["step"][...]
        return steps, self.group[pooling][: len(steps)]
