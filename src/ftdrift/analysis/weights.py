"""Weight-space analysis of one fine-tuning run: what the update did to the adapted matrices.

For every matrix the family adapts with LoRA (e.g. q_proj/v_proj for Llama, query/value for
BERT) and for both methods, the weight update ΔW is

    LoRA:  ΔW = peft's own `get_delta_weight` of the layer, the update `merge` adds to W_base
           (for a plain lora.Linear: scaling·B·A, with peft's `module.scaling[adapter]`,
           α/r or α/√r with rsLoRA)
    full:  ΔW = W_ft − W_base

and each row records ΔW's spectrum (effective rank, stable rank, Frobenius norm, top singular
value), `rank_energy` (the fewest singular values of ΔW holding `delta_energy` of ||ΔW||_F^2) and
the intruder dimensions of W_ft = W_base + ΔW against W_base (Shuttleworth et al. 2024) at the
headline (top-k, ε). A second table holds the intruder counts over the whole sweep of top-k x ε
(one row per matrix x k x ε; both SVDs run once per matrix). All of it runs in float64 on the CPU
through `ftdrift.core.spectra`.

(That the merged adapter computes what the trained adapter computes is checked by
ftdrift.analysis.checkpoints, on the validation split.)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ftdrift.core.spectra import (
    energy_rank,
    intruder_cosines,
    intruder_counts,
    singular_value_summary,
    singular_values,
)
from ftdrift.modeling import lora, models
from ftdrift.modeling.lora import ADAPTER
from ftdrift.study import families
from ftdrift.study.config import task_kind
from ftdrift.study.grid import RUN_KEYS

log = logging.getLogger("ftdrift.analysis.weights")

ROW_KEYS = ["module", "layer", "matrix", "effective_rank", "stable_rank", "frobenius_norm",
            "top_singular_value", "intruder_dims", "rank_energy"]
# results/weights/<run>.intruders.csv: one row per matrix x top-k x ε (after the RUN_KEYS)
SWEEP_KEYS = ["module", "layer", "matrix", "k", "epsilon", "intruders"]
# schema defaults of weights.intruder_ks / intruder_epsilons / delta_energy
DEFAULT_KS = (5, 10, 20)
DEFAULT_EPSILONS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_ENERGY = 0.9


def _task_model(model):
    """The transformers task model inside a peft wrapper (itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def analysed_modules(model, family_name: str, targets,
                     lora: bool = False) -> list[tuple[str, int, str, torch.nn.Module]]:
    """(dotted name in the task model, block index, matrix name, module) of every analysed matrix.

    Without `lora`, the linear layers whose last name part is in `targets`; with it, the LoRA
    layers (whatever the adapter targeted). Names are those of the transformers task model
    (e.g. 'model.layers.3.self_attn.q_proj'), the same for both methods.
    """
    from peft.tuners.lora import LoraLayer

    names = {id(m): n for n, m in _task_model(model).named_modules()}
    found = []
    for layer, block in enumerate(models.blocks(model, family_name)):
        for sub, module in block.named_modules():
            leaf = sub.rsplit(".", 1)[-1]
            if lora:
                wanted = isinstance(module, LoraLayer)
            else:
                wanted = leaf in targets and isinstance(module, torch.nn.Linear)
            if wanted:
                found.append((names[id(module)], layer, leaf, module))
    if not found:
        what = "LoRA layers" if lora else f"modules named {list(targets)}"
        raise ValueError(f"config key 'lora.target_modules': no {what} found in the blocks of the "
                         f"{family_name} model")
    return found


def matrix_row(w_base: np.ndarray, delta: np.ndarray, top_k: int, epsilon: float,
               same_spectrum: np.ndarray | None = None, *, ks=DEFAULT_KS, epsilons=DEFAULT_EPSILONS,
               energy: float = DEFAULT_ENERGY) -> tuple[dict, np.ndarray]:
    """Spectrum of ΔW, its `rank_energy`, and intruder dimensions of W_base + ΔW (float64 [out, in] arrays).

    Returns (row, sweep): the row has ROW_KEYS' values after module/layer/matrix (intruder_dims at
    (`top_k`, `epsilon`), rank_energy at `energy`); sweep is the int array [len(ks), len(epsilons)] of
    intruder counts (`ftdrift.core.spectra.intruder_sweep`). Both SVDs of the intruder count run
    once for the headline point and the sweep. `same_spectrum`, when given, is a (smaller) matrix
    with ΔW's non-zero singular values, whose decomposition replaces ΔW's own (see `lora_core`).
    """
    s = singular_values(delta if same_spectrum is None else same_spectrum)
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


def lora_core(lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float) -> torch.Tensor:
    """An r x r matrix with the singular values of scale·B·A (float64 torch tensor).

    Shapes as in peft: `lora_A` is [r, in_features], `lora_B` is [out_features, r] (any float
    dtype and device; computed in float64 on that device). With B = Q_b R_b and Aᵀ = Q_a R_a
    (thin QR, orthonormal Q), scale·B·A = Q_b (scale·R_b R_aᵀ) Q_aᵀ, so its singular values are
    those of the core scale·R_b·R_aᵀ: an r x r SVD instead of an out x in one, and no round-off
    tail of spurious tiny values beyond rank r.
    """
    if lora_A.ndim != 2 or lora_B.ndim != 2 or lora_B.shape[1] != lora_A.shape[0]:
        raise ValueError(f"lora_A must be [r, in] and lora_B [out, r], got {tuple(lora_A.shape)} "
                         f"and {tuple(lora_B.shape)}")
    r_b = torch.linalg.qr(lora_B.detach().to(torch.float64))[1]
    r_a = torch.linalg.qr(lora_A.detach().to(torch.float64).T)[1]
    return float(scale) * (r_b @ r_a.T)


def _as64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float64).numpy()


def _check_plain_lora(module, adapter: str) -> None:
    """Refuse LoRA layers whose merged update is not W_base + get_delta_weight = W_base + scaling·B·A."""
    from peft.tuners.lora import Linear as LoraLinear

    if module.use_dora.get(adapter, False):
        raise ValueError("weight analysis: DoRA adapters are not plain B·A updates (peft merges a "
                         "magnitude-rescaled W + scaling·B·A, not W + get_delta_weight; not supported)")
    if adapter in getattr(module, "lora_variant", {}):
        raise ValueError(f"weight analysis: LoRA variant {type(module.lora_variant[adapter]).__name__} "
                         "is not a plain B·A update (peft merges it otherwise than W + get_delta_weight; "
                         "not supported)")
    if not isinstance(module, LoraLinear):
        raise ValueError(f"weight analysis: {type(module).__name__} LoRA layers are not supported "
                         "(only peft's lora.Linear, whose update is scaling·B·A)")
    if getattr(module, "fan_in_fan_out", False):
        raise ValueError("weight analysis: fan_in_fan_out LoRA layers (Conv1D models) are not supported "
                         "(their weights are stored [in, out], so the intruder count would compare input-side "
                         "singular vectors instead of output-side ones)")
    if module.lora_bias.get(adapter, False) or getattr(module.lora_B[adapter], "bias", None) is not None:
        raise ValueError("weight analysis: LoRA adapters with a bias (lora_bias) are not supported "
                         "(peft also merges a bias update, which ΔW of the weight leaves out)")


def lora_update(module, adapter: str = ADAPTER) -> tuple[np.ndarray, np.ndarray]:
    """ΔW of one LoRA layer exactly as peft merges it, and an r x r core with its spectrum.

    ΔW is peft's `module.get_delta_weight(adapter)` ([out, in], the layout of nn.Linear.weight):
    in peft 0.21.2 `lora.Linear.get_delta_weight` computes scaling·B·A in the adapter's dtype
    (fp16/bf16 on the CPU through float32 and back) and `merge` adds exactly it to the base
    weight; here it is widened to float64. The core is `lora_core(A, B, module.scaling[adapter])`
    (float64): its singular values are ΔW's non-zero ones, without ΔW's round-off tail.

    Raises ValueError for layers ΔW cannot describe: DoRA and other LoRA variants (merged
    otherwise), non-Linear LoRA layers, fan_in_fan_out (Conv1D) layers, and LoRA biases.
    """
    _check_plain_lora(module, adapter)
    with torch.no_grad():
        delta = module.get_delta_weight(adapter)
        core = lora_core(module.lora_A[adapter].weight, module.lora_B[adapter].weight, module.scaling[adapter])
    return _as64(delta), _as64(core)


def _check_lora_config(lora_cfg: dict | None, peft_config, model_dir) -> None:
    """The adapter on disk must be the one the configuration describes (else rows are mislabelled)."""
    if not lora_cfg:
        return
    for key, saved in (("r", peft_config.r), ("alpha", peft_config.lora_alpha)):
        if key in lora_cfg and float(lora_cfg[key]) != float(saved):
            raise ValueError(f"config key 'lora.{key}' is {lora_cfg[key]} but the adapter in {model_dir} "
                             f"was trained with {saved}: re-run its fine-tuning")


def analyse_run(*, model_dir, model_cfg: dict, task_def: dict, method: str, lora_cfg: dict | None, run: dict,
                top_k: int = 10, epsilon: float = 0.5, intruder_ks=DEFAULT_KS, intruder_epsilons=DEFAULT_EPSILONS,
                delta_energy: float = DEFAULT_ENERGY,
                target_modules: list[str] | None = None) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """Per-matrix weight-update rows, a run summary and the intruder sweep of one saved run (see the module doc).

    Returns (rows, summary, sweep): rows have RUN_KEYS + ROW_KEYS (results/weights/<run>.csv), sweep
    RUN_KEYS + SWEEP_KEYS, one row per matrix x k in `intruder_ks` x ε in `intruder_epsilons`
    (results/weights/<run>.intruders.csv). `top_k`/`epsilon` give the headline intruder_dims column,
    `delta_energy` the share of ||ΔW||_F^2 that rank_energy must hold.

    `model_dir` is the run's saved model: a peft adapter folder (LoRA) or a full task model.
    The analysed matrices are the family's LoRA targets (`target_modules`, else
    `lora_cfg['target_modules']`, else the family default) for full fine-tuning, and the layers
    the adapter itself adapts for LoRA.

    Summary: trainable_params and total_params as train.py counts them (total = the base task
    model's parameters), the intruder and energy settings and the adapter's LoRA settings.
    """
    if method not in ("full", "lora"):
        raise ValueError(f"unknown method '{method}' (known: full, lora)")
    started = time.time()
    model_dir = Path(model_dir)
    family = families.family(model_cfg["family"])
    kind = task_kind(task_def)
    num_labels = len(task_def["labels"]) if kind == "classification" else None
    targets = list(target_modules or (lora_cfg or {}).get("target_modules") or family.lora_target_modules)
    tokenizer = models.load_tokenizer(model_cfg)
    # the base task model: its new head is random, but only the adapted matrices are compared
    base = models.load_model(model_cfg, kind, num_labels, tokenizer, dtype=torch.float32)
    total_params = sum(p.numel() for p in base.parameters())

    ks = [int(k) for k in intruder_ks]
    epsilons = [float(e) for e in intruder_epsilons]
    settings = dict(ks=ks, epsilons=epsilons, energy=delta_energy)
    rows, sweeps, lora_info = [], [], None
    with torch.no_grad():
        if method == "lora":
            # trainable: the parameters training updated are counted as the training job counts them
            model = lora.load(base, model_dir, trainable=True)
            model.eval()
            peft_config = model.peft_config[ADAPTER]
            _check_lora_config(lora_cfg, peft_config, model_dir)
            trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            found = analysed_modules(model, family.name, targets, lora=True)
            for name, layer, matrix, module in found:
                delta, core = lora_update(module, ADAPTER)
                row, sweep = matrix_row(_as64(module.get_base_layer().weight), delta, top_k, epsilon,
                                        same_spectrum=core, **settings)
                rows.append({"module": name, "layer": layer, "matrix": matrix, **row})
                sweeps += sweep_rows(name, layer, matrix, sweep, ks, epsilons)
                log.info("%s: %s", name, rows[-1])
            lora_info = {"r": peft_config.r, "alpha": peft_config.lora_alpha,
                         "use_rslora": bool(getattr(peft_config, "use_rslora", False)),
                         "target_modules": sorted({m for _, _, m, _ in found})}
        else:
            base_weights = {name: module.weight.detach().clone()
                            for name, _, _, module in analysed_modules(base, family.name, targets)}
            del base  # one model in memory at a time
            model = models.load_fine_tuned(model_dir, kind)
            trainable_params = sum(p.numel() for p in model.parameters())  # full fine-tuning trains them all
            for name, layer, matrix, module in analysed_modules(model, family.name, targets):
                if name not in base_weights:
                    raise ValueError(f"{model_dir}: module {name} has no counterpart in the base model")
                w_base, w_ft = _as64(base_weights[name]), _as64(module.weight)
                row, sweep = matrix_row(w_base, w_ft - w_base, top_k, epsilon, **settings)
                rows.append({"module": name, "layer": layer, "matrix": matrix, **row})
                sweeps += sweep_rows(name, layer, matrix, sweep, ks, epsilons)
                log.info("%s: %s", name, rows[-1])

    table = pd.DataFrame(rows, columns=ROW_KEYS)
    sweep_table = pd.DataFrame(sweeps, columns=SWEEP_KEYS)
    for frame in (table, sweep_table):
        for i, key in enumerate(RUN_KEYS):
            frame.insert(i, key, run[key])
    summary = {
        "run": {k: run[k] for k in RUN_KEYS},
        "trainable_params": int(trainable_params),
        "total_params": int(total_params),
        "trainable_fraction": trainable_params / total_params,
        "n_matrices": len(rows),
        "intruder_top_k": int(top_k),
        "intruder_epsilon": float(epsilon),
        "intruder_ks": ks,
        "intruder_epsilons": epsilons,
        "delta_energy": float(delta_energy),
        "lora": lora_info,
        "seconds": time.time() - started,
    }
    return table, summary, sweep_table


def _read_run_tables(paths, columns: list[str]) -> pd.DataFrame:
    frames = [pd.read_csv(p, dtype={"lr": str}) for p in paths]
    if not frames:
        return pd.DataFrame(columns=columns)
    for path, frame in zip(paths, frames):
        missing = [c for c in columns if c not in frame]
        if missing:
            raise ValueError(f"{path}: columns {missing} missing (written by an older weight_analysis? re-run it)")
    return pd.concat(frames, ignore_index=True)


def aggregate_weights(paths) -> pd.DataFrame:
    """All runs' per-matrix rows (RUN_KEYS + ROW_KEYS, rank_energy included) in one table (lr kept as
    its path string, e.g. '5e-3'). Raises ValueError naming a file that lacks a column."""
    return _read_run_tables(paths, RUN_KEYS + ROW_KEYS)


def aggregate_intruders(paths) -> pd.DataFrame:
    """All runs' intruder sweeps (results/weights/<run>.intruders.csv) in one table: RUN_KEYS + SWEEP_KEYS
    = task, method, lr, batch_size, seed, module, layer, matrix, k, epsilon, intruders; one row per run x
    matrix x k x ε (lr kept as its path string). Raises ValueError naming a file that lacks a column."""
    return _read_run_tables(paths, RUN_KEYS + SWEEP_KEYS)
