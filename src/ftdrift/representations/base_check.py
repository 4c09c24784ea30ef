"""The runtime guard of every fine-tuning job: before its first update, the task model must compute
the base model's representations (its step-0 snapshot equals the base store).

Why at run time and not only in tests: a task model whose backbone was not loaded from the
checkpoint (a key-prefix mismatch, a missing shard) trains a random network and still finishes;
its drift would be reported as fine-tuning drift. The check costs two Gram matrices per layer.
"""

from __future__ import annotations

import numpy as np
from transformers import TrainerCallback

from ftdrift.core.similarity import linear_cka
from ftdrift.core.store import SnapshotStore, check_comparable, read_base

# |1 - linear CKA| allowed between the step-0 snapshot and the base store, per layer and pooling, by
# the stores' precision. Both are the same forward pass in the same precision and storage dtype: on
# one machine they agree bit for bit. Across GPU models (the gcp-gpu profile takes base stores on an
# L4 and trains on an A100) the kernels' summation order differs, and in bf16 those differences
# round up through the layers: measured on MiniLM with fp32-sized perturbations, 1 - CKA reaches
# ~1e-5 by layer 6. A backbone that did not load gives CKA 0.4-0.7 (issue 23), far outside either.
TOLERANCE = {"fp32": 1e-6, "bf16": 1e-3, "fp16": 1e-3}


class BaseModelMismatch(RuntimeError):
    """The step-0 snapshot is not the base model's representation."""


def check_step0(base_path, store: SnapshotStore, model_name: str, tolerance: float | None = None) -> None:
    """Compare the store's step-0 snapshot with the base store `base_path`, layer by layer.

    Every pooling of the base store, every layer (layer 0 = embeddings): |1 - linear CKA| must not
    exceed `tolerance` (default: TOLERANCE of the stores' precision). Raises BaseModelMismatch
    naming the model, the first differing layer (by name) and pooling, and its CKA; ValueError when
    the two were taken on different probe sets or precisions, or the store holds no step-0 snapshot.
    """
    base, base_attrs = read_base(base_path)
    attrs, steps = store.attrs, store.steps()
    check_comparable(base_path, base_attrs, store.path, attrs)
    if not steps or steps[0] != 0:
        raise ValueError(f"{store.path}: no step-0 snapshot to compare with the base model (steps {steps[:5]})")
    names = attrs["layer_names"]
    if tolerance is None:
        tolerance = TOLERANCE[attrs.get("precision", "fp32")]
    for pooling in base_attrs["poolings"]:
        snapshot = store.group[pooling][0]  # [layer, example, hidden]
        for layer, name in enumerate(names):
            cka = linear_cka(np.asarray(base[pooling][layer], dtype=np.float64),
                             np.asarray(snapshot[layer], dtype=np.float64))
            if not abs(1.0 - cka) <= tolerance:
                raise BaseModelMismatch(
                    f"model '{model_name}': before training, the task model's representations differ from the "
                    f"base model's from layer '{name}' on ({pooling} pooling: linear CKA {cka:.6f}, tolerance "
                    f"{tolerance:g}); its backbone did not load as the checkpoint's (see the loading report above)")


class BaseModelGuard(TrainerCallback):
    """Runs `check_step0` once per process, as training begins (after the step-0 snapshot: add it
    after the SnapshotCallback). A failure raises out of `Trainer.train` and fails the job."""

    def __init__(self, base_path, store: SnapshotStore, model_name: str):
        self.base_path, self.store, self.model_name = base_path, store, model_name
        self.checked = False

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.checked:
            check_step0(self.base_path, self.store, self.model_name)
            self.checked = True
