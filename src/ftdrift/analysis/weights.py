"""Weight-space analysis of one fine-tuning run: what the update did to the adapted matrices.

For every method (ftdrift.study.methods) the update of a weight matrix is read off the merged
model against the ORIGINAL pre-trained weights,

    ΔW = W_merged − W_pretrained

where W_merged is the saved full model's matrix (full fine-tuning) or the base model with the
run's adapter folded in by peft (`merge_and_unload`; ftdrift.analysis.tuned). So LoRA's ΔW is
scaling·B·A, DoRA's the magnitude-rescaled W + scaling·B·A minus W, IA3's a diagonal scaling of
W's rows or columns minus W, and PiSSA's the update against the original weights: its saved
adapter is peft's conversion to a plain LoRA adapter on the unmodified base (rank 2r,
ftdrift.modeling.methods.save_adapter), not the residual peft trains on. An adapter is merged in
float64, so ΔW carries no float32 merge round-off (which would add a tail of spurious small
singular values to a low-rank update and inflate its effective rank).

The analysed matrices are the linear layers of the transformer blocks (nn.Linear; transformers'
Conv1D transposed to [out, in]) that the method changed: for an adapter, those peft replaced by a
tuner layer (modules outside the blocks, e.g. a pooler, are listed in the summary as not
analysed); for full fine-tuning, every block linear whose weight differs from the pre-trained one
(the blocks' other weight tensors of two or more dimensions, e.g. a mixture of experts' fused
[experts, out, in] weights, are listed in the summary as not analysed).
A matrix is named by its path inside the block ('self_attn.q_proj', 'attention.self.query').

Each row records ΔW's spectrum (effective rank, stable rank, Frobenius norm, top singular value),
`rank_energy` (the fewest singular values of ΔW holding `delta_energy` of ||ΔW||_F^2) and the
intruder dimensions of W_merged against W_pretrained (Shuttleworth et al. 2024) at the headline
(top-k, ε). A second table holds the intruder counts over the whole sweep of top-k x ε (one row
per matrix x k x ε; both SVDs run once per matrix). All of it runs in float64 on the CPU through
`ftdrift.core.spectra`.

(That the merged adapter computes what the trained adapter computes is checked by
ftdrift.analysis.checkpoints, on the validation split.)
"""

from __future__ import annotations

import json
import logging
import re
import time

import numpy as np
import pandas as pd
import torch

from ftdrift.analysis import tuned
from ftdrift.analysis.weight_tables import ROW_KEYS, SWEEP_KEYS
from ftdrift.core.spectra import (
    energy_rank,
    intruder_cosines,
    intruder_counts,
    singular_value_summary,
    singular_values,
)
from ftdrift.modeling import methods, targets
from ftdrift.study.grid import RUN_KEYS
from ftdrift.study.methods import Method

log = logging.getLogger("ftdrift.analysis.weights")

# schema defaults of weights.intruder_ks / intruder_epsilons / delta_energy
DEFAULT_KS = (5, 10, 20)
DEFAULT_EPSILONS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_ENERGY = 0.9


def weight_matrix(module: torch.nn.Module) -> torch.Tensor:
    """A linear layer's weight as [out, in] (nn.Linear's layout; transformers' Conv1D stores
    [in, out] and is transposed), detached, on its own device and dtype."""
    weight = module.weight.detach()
    return weight if isinstance(module, torch.nn.Linear) else weight.T


def block_matrices(model) -> dict[str, tuple[int, str, torch.nn.Module]]:
    """{full name in the task model: (block index, block-relative path, module)} of every linear
    layer of the transformer blocks (ftdrift.modeling.targets.block_linears), in model order."""
    prefix, _ = targets.blocks(model)
    pattern = re.compile(rf"{re.escape(prefix)}\.(\d+)\.(.+)")
    modules = dict(targets.task_model(model).named_modules())
    found = {}
    for name in targets.block_linears(model):
        match = pattern.fullmatch(name)
        found[name] = (int(match.group(1)), match.group(2), modules[name])
    return found


def other_block_weights(model) -> list[str]:
    """Block-relative names of the blocks' parameters of two or more dimensions that belong to no
    linear layer (Qwen3-MoE's `mlp.experts.gate_up_proj`): full fine-tuning changes them, the
    analysis does not read them."""
    prefix, layers = targets.blocks(model)
    linear = set(targets.block_linears(model))
    return targets.relative(model, [f"{prefix}.{i}.{name}" for i, block in enumerate(layers)
                                    for name, parameter in block.named_parameters()
                                    if parameter.ndim >= 2 and f"{prefix}.{i}.{name.rsplit('.', 1)[0]}" not in linear])


def matrix_row(w_base: np.ndarray, delta: np.ndarray, top_k: int, epsilon: float, *, ks=DEFAULT_KS,
               epsilons=DEFAULT_EPSILONS, energy: float = DEFAULT_ENERGY) -> tuple[dict, np.ndarray]:
    """Spectrum of ΔW, its `rank_energy`, and intruder dimensions of W_base + ΔW (float64 [out, in] arrays).

    Returns (row, sweep): the row has ROW_KEYS' values after module/layer/matrix (intruder_dims at
    (`top_k`, `epsilon`), rank_energy at `energy`); sweep is the int array [len(ks), len(epsilons)] of
    intruder counts (`ftdrift.core.spectra.intruder_sweep`). Both SVDs of the intruder count run
    once for the headline point and the sweep.
    """
    s = singular_values(delta)
    ks = list(ks)
    cosines = intruder_cosines(w_base, w_base + delta, max([int(top_k), *ks]))
    row = {**singular_value_summary(s),
           "intruder_dims": int(intruder_counts(cosines, [top_k], [epsilon])[0, 0]),
           "rank_energy": energy_rank(s, energy)}
    return row, intruder_counts(cosines, ks, epsilons)


def sweep_rows(module: str, layer: int, matrix: str, sweep: np.ndarray, ks, epsilons) -> list[dict]:
    """The intruder sweep of one matrix as SWEEP_KEYS rows (k-major, then ε)."""
    return [{"module": module, "layer": layer, "matrix": matrix, "k": int(k), "epsilon": float(eps),
             "intruders": int(sweep[i, j])}
            for i, k in enumerate(ks) for j, eps in enumerate(epsilons)]


def _as64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float64).numpy()


def _jsonable(value):
    """A peft config dict as JSON values (sets sorted, enums and other objects as strings)."""
    return json.loads(json.dumps(value, default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else str(o)))


def updates(model_dir, method: Method, model_cfg: dict, task_def: dict) -> dict:
    """The run's weight updates against the pre-trained weights (see the module doc).

    Returns {'matrices': [(name, layer, matrix, W_pre, ΔW)] (float64 numpy [out, in], model order),
    'trainable_params', 'total_params' (the base task model's parameters, as training counts them),
    'not_analysed' (adapted modules outside the blocks; for full fine-tuning `other_block_weights`),
    'adapter_config' (the saved adapter's peft
    config as a dict; None for full fine-tuning)}. ValueError when the method changed no block matrix.
    """
    base = tuned.base_task_model(model_cfg, task_def)
    total_params = sum(p.numel() for p in base.parameters())
    pre = {name: (layer, matrix, weight_matrix(module).clone())
           for name, (layer, matrix, module) in block_matrices(base).items()}
    adapter_config, not_analysed = None, []
    with torch.no_grad():
        if method.is_full:
            not_analysed = other_block_weights(base)
            del base  # one model in memory at a time
            model = tuned.load_tuned(model_dir, method, model_cfg, task_def)
            trainable_params = sum(p.numel() for p in model.parameters())  # full fine-tuning trains them all
            after = {n: weight_matrix(m) for n, (_, _, m) in block_matrices(model).items()}
            changed = [n for n in pre if n in after and not torch.equal(after[n], pre[n][2])]
        else:
            # trainable: the parameters training updated are counted as the training job counts them
            model = tuned.load_tuned(model_dir, method, model_cfg, task_def, base=base, trainable=True)
            trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            adapter_config = _jsonable(model.peft_config[methods.ADAPTER].to_dict())
            adapted = methods.adapted_modules(model)
            changed = [n for n in pre if n in set(adapted)]
            not_analysed = targets.relative(model, [n for n in adapted if n not in pre])
            merged = methods.merged(model.double())  # float64: ΔW without merge round-off
            after = {n: weight_matrix(m) for n, (_, _, m) in block_matrices(merged).items()}
        missing = [n for n in changed if n not in after]
        if missing:
            raise ValueError(f"{model_dir}: modules {missing[:3]} have no counterpart in the base model")
    if not changed:
        raise ValueError(f"{model_dir}: method '{method.name}' changed no linear layer of the transformer blocks")
    matrices = [(n, pre[n][0], pre[n][1], _as64(pre[n][2]), _as64(after[n]) - _as64(pre[n][2])) for n in changed]
    return {"matrices": matrices, "trainable_params": int(trainable_params), "total_params": int(total_params),
            "not_analysed": not_analysed, "adapter_config": adapter_config}


def analyse_run(*, model_dir, model_cfg: dict, task_def: dict, method: Method, run: dict, top_k: int = 10,
                epsilon: float = 0.5, intruder_ks=DEFAULT_KS, intruder_epsilons=DEFAULT_EPSILONS,
                delta_energy: float = DEFAULT_ENERGY) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """Per-matrix weight-update rows, a run summary and the intruder sweep of one saved run (see the module doc).

    Returns (rows, summary, sweep): rows have RUN_KEYS + ROW_KEYS (results/weights/<run>.csv), sweep
    RUN_KEYS + SWEEP_KEYS, one row per matrix x k in `intruder_ks` x ε in `intruder_epsilons`
    (results/weights/<run>.intruders.csv). `top_k`/`epsilon` give the headline intruder_dims column,
    `delta_energy` the share of ||ΔW||_F^2 that rank_energy must hold. `method`: the run's
    Method (ftdrift.analysis.tuned.method_of).

    Summary: trainable_params and total_params as train.py counts them (total = the base task
    model's parameters), the intruder and energy settings, the method (name, peft spec, the saved
    adapter's peft config), the analysed matrix paths and what the method changed but the analysis
    does not read (`updates`' not_analysed).
    """
    started = time.time()
    found = updates(model_dir, method, model_cfg, task_def)
    ks = [int(k) for k in intruder_ks]
    epsilons = [float(e) for e in intruder_epsilons]
    rows, sweeps = [], []
    for name, layer, matrix, w_pre, delta in found["matrices"]:
        row, sweep = matrix_row(w_pre, delta, top_k, epsilon, ks=ks, epsilons=epsilons, energy=delta_energy)
        rows.append({"module": name, "layer": layer, "matrix": matrix, **row})
        sweeps += sweep_rows(name, layer, matrix, sweep, ks, epsilons)
        log.info("%s: %s", name, rows[-1])
    table = pd.DataFrame(rows, columns=ROW_KEYS)
    sweep_table = pd.DataFrame(sweeps, columns=SWEEP_KEYS)
    for frame in (table, sweep_table):
        for i, key in enumerate(RUN_KEYS):
            frame.insert(i, key, run[key])
    trainable, total = found["trainable_params"], found["total_params"]
    summary = {
        "run": {k: run[k] for k in RUN_KEYS},
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total,
        "n_matrices": len(rows),
        "matrices": sorted({m for _, _, m, _, _ in found["matrices"]}),
        "not_analysed": found["not_analysed"],
        "intruder_top_k": int(top_k),
        "intruder_epsilon": float(epsilon),
        "intruder_ks": ks,
        "intruder_epsilons": epsilons,
        "delta_energy": float(delta_energy),
        "method": {"name": method.name, "peft": method.peft, "adapter_config": found["adapter_config"]},
        "seconds": time.time() - started,
    }
    return table, summary, sweep_table
