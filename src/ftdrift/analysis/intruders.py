"""Do intruder dimensions matter? Scale them in a trained adapter and measure what changes.

Intruder dimensions (Shuttleworth et al. 2024) are top singular directions of a fine-tuned matrix
W = W_pre + ΔW that resemble no singular direction of the pre-trained W_pre: among the first
`top_k` left singular vectors u_i of W (W = Σ s_i u_i v_iᵀ), those whose largest |cosine| with any
left singular vector of W_pre is below ε (ftdrift.core.spectra.intruder_cosines; the weight
analysis counts them at the same (top_k, ε)). The intervention scales their part of W by λ:

    W_λ = W + (λ − 1) · Σ_{i ∈ intruders} s_i u_i v_iᵀ

(λ = 1: the trained model; λ = 0: the intruder directions removed). This is the operation of
peft 0.21.2's `reduce_intruder_dimension` (`W_mitigated = W_merged + (λ − 1)·B_I A_I` with
B_I A_I = U_I S_I V_Iᵀ from the SVD of W_merged), applied to the merged weights of every adapted
matrix, for every adapter method alike. peft's function itself is not used: it handles LoRA only
(not DoRA, whose merge is no W + ΔW, nor IA3), refits the mitigated update to rank r (a second
change on top of the scaling: the intruder directions of W_merged need not lie in ΔW's span), and
its new adapter (`add_adapter`) gets an untrained copy of the task head (`modules_to_save` copies
the original module), so it would also reset the trained head.

For each adapter method's chosen setting per task (best.csv's setting, its lowest usable seed, as
ftdrift.analysis.deployment chooses) and each λ the job measures
  * the validation metric (the task's main metric) on the first `max_examples` validation
    examples, through the training job's prediction path (ftdrift.training.predict);
  * forgetting (ftdrift.analysis.forgetting): for families with a language-modelling head and a
    text file, the base head's mean next-token loss on generic text with the intervened backbone;
    otherwise the frozen base-model probe of every other classification task applied to the
    intervened model's representations of that task's probe set (probe transfer).

results/tables/intruder_intervention.csv, one row per run × λ × measurement:
    task, method, lr, batch_size, seed     the run
    lambda                                 the scale of the intruder directions
    measure        'validation' | 'lm_loss' | 'probe_transfer'
    probe_task     the other task (probe_transfer), else empty
    metric         the metric's name (the task's main metric; 'lm_loss' in nats)
    value          the measured value at λ
    baseline       the reference value: the base model's (lm_loss, probe_transfer); for validation empty
    n_examples     examples (validation, probe transfer) or predicted tokens (lm_loss)
    n_matrices     adapted matrices intervened on; n_intruders: intruder directions over all of them
    top_k, epsilon the intruder definition
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ftdrift.analysis import tuned
from ftdrift.analysis.weights import updates
from ftdrift.core import io

log = logging.getLogger("ftdrift.analysis.intruders")

COLUMNS = ["task", "method", "lr", "batch_size", "seed", "lambda", "measure", "probe_task", "metric", "value",
           "baseline", "n_examples", "n_matrices", "n_intruders", "top_k", "epsilon"]
DEFAULT_LAMBDAS = (1.0, 0.75, 0.5, 0.25, 0.0)


# ----------------------------------------------------------------------------- the operation
def intruder_component(w_pre: np.ndarray, w: np.ndarray, top_k: int, epsilon: float) -> tuple[np.ndarray, int]:
    """(C, n): the part C = Σ_{i ∈ intruders} s_i u_i v_iᵀ of `w` along its intruder directions against
    `w_pre` (both float64 [out, in]; see the module doc) and their number n (C = 0 when n = 0).
    ValueError for shapes that differ."""
    if w_pre.shape != w.shape:
        raise ValueError(f"w_pre and w shapes differ: {w_pre.shape} vs {w.shape}")
    u_pre = np.linalg.svd(w_pre, full_matrices=False)[0]
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    k = min(int(top_k), s.size)
    cosines = np.abs(u_pre.T @ u[:, :k]).max(axis=0)
    index = np.flatnonzero(cosines < epsilon)
    return (u[:, index] * s[index]) @ vt[index], int(index.size)


def scaled(w: np.ndarray, component: np.ndarray, lam: float) -> np.ndarray:
    """W_λ = W + (λ − 1)·C."""
    return w + (float(lam) - 1.0) * component


class Intervention:
    """A merged adapter model whose adapted block matrices can be set to any λ.

    `matrices`: weights.updates(...)['matrices'] ((name, layer, matrix, W_pre, ΔW) float64);
    `model`: the merged task model (float32) whose modules `name` are set in place."""

    def __init__(self, model, matrices, top_k: int, epsilon: float):
        self.model = model
        modules = dict(model.named_modules())
        self.parts = []
        for name, _, _, w_pre, delta in matrices:
            w = w_pre + delta
            component, n = intruder_component(w_pre, w, top_k, epsilon)
            self.parts.append((modules[name], w, component, n))
        self.n_matrices = len(self.parts)
        self.n_intruders = sum(n for *_, n in self.parts)

    @torch.no_grad()
    def set(self, lam: float) -> None:
        """Set every adapted matrix to W_λ (float64 computed, stored in the module's dtype)."""
        for module, w, component, n in self.parts:
            value = scaled(w, component, lam) if n else w
            tensor = torch.from_numpy(value)
            if not isinstance(module, torch.nn.Linear):  # transformers Conv1D stores [in, out]
                tensor = tensor.T
            module.weight.copy_(tensor.to(module.weight.dtype))


# ----------------------------------------------------------------------------- measurements
def validation_metric(model, tokenizer, records: list[dict], task_def: dict, data: dict, model_cfg: dict,
                      batch_size: int, precision: str) -> float:
    """The task's main metric of `model` on `records` (the training job's prediction path)."""
    from ftdrift.study import families
    from ftdrift.training.predict import predict_split, predictor

    device = "cuda" if torch.cuda.is_available() else "cpu"
    trainer = predictor(model.to(device).eval(), tokenizer, batch_size, precision)
    result = predict_split(trainer, records, task_def, tokenizer, data, families.qa_null_at_end(model_cfg))
    return float(result.metrics[task_def["main_metric"]])


class Forgetting:
    """Forgetting measurements of a task model's backbone, set up once per job: the LM loss (a
    family with a language-modelling head and a text file) or probe transfer on `others`."""

    def __init__(self, model_cfg: dict, tokenizer, others: Mapping[str, dict], forgetting_cfg: dict | None,
                 text_file, precision: str):
        from ftdrift.analysis import lm_loss
        from ftdrift.study import families

        self.tokenizer, self.others, self.precision, self.lm, self.reason = tokenizer, others, precision, None, ""
        if families.family(model_cfg).causal_lm and text_file:
            self.lm, self.reason = lm_loss.load_base_lm(model_cfg)
        if self.lm is not None:
            self.score = dict(ids=lm_loss.read_text_tokens(text_file, tokenizer, forgetting_cfg["max_tokens"]),
                              window=forgetting_cfg["window"], batch_size=forgetting_cfg["batch_size"],
                              precision=precision)
            self.base_loss, self.tokens = lm_loss.lm_loss(self.lm, **self.score)

    def rows(self, task_model, source: str) -> list[dict]:
        """[{measure, probe_task, metric, value, baseline, n_examples}] for `task_model`'s backbone."""
        from ftdrift.analysis import lm_loss
        from ftdrift.analysis.forgetting import backbone_of

        backbone = backbone_of(task_model)
        if self.lm is not None:
            lm_loss.load_backbone(self.lm, backbone, source)
            loss, _ = lm_loss.lm_loss(self.lm, **self.score)
            return [{"measure": "lm_loss", "probe_task": None, "metric": "lm_loss", "value": loss,
                     "baseline": self.base_loss, "n_examples": self.tokens}]
        return [self._transfer(backbone, task, spec) for task, spec in self.others.items()]

    def _transfer(self, backbone, task: str, spec: dict) -> dict:
        from ftdrift.analysis.baselines import load_probe
        from ftdrift.analysis.forgetting import probe_transfer_row
        from ftdrift.core.store import read_base
        from ftdrift.representations.base import probe_representations

        base, _ = read_base(spec["base"])
        records = io.read_jsonl(spec["probe"])
        probe = load_probe(spec["probe_model"])
        # only the probe's pooling is needed: the other poolings would cost extraction time for nothing
        features = probe_representations(backbone, records, self.tokenizer, spec["task_def"], spec["data"],
                                         spec["representations"], (probe["pooling"],), self.precision)
        row = probe_transfer_row(task, probe, [r["label"] for r in records], base, features,
                                 spec["task_def"]["main_metric"])
        return {"measure": "probe_transfer", "probe_task": task, "metric": row["metric"], "value": row["finetuned"],
                "baseline": row["base"], "n_examples": len(records)}


# ----------------------------------------------------------------------------- the job
def intervene_run(chosen, method, *, model_cfg: dict, task_def: dict, data: dict, tokenizer, records: list[dict],
                  lambdas: Sequence[float], top_k: int, epsilon: float, forgetting: Forgetting,
                  batch_size: int, precision: str) -> list[dict]:
    """COLUMNS rows of one chosen adapter run (a deployment `Chosen`) for every λ in `lambdas`."""
    found = updates(chosen.model_dir, method, model_cfg, task_def)
    model = tuned.load_tuned(chosen.model_dir, method, model_cfg, task_def, tokenizer, merge=True)
    intervention = Intervention(model, found["matrices"], top_k, epsilon)
    run = {"task": chosen.task, "method": chosen.method, "lr": chosen.lr, "batch_size": chosen.batch_size,
           "seed": chosen.seed}
    common = {"n_matrices": intervention.n_matrices, "n_intruders": intervention.n_intruders, "top_k": int(top_k),
              "epsilon": float(epsilon)}
    rows = []
    for lam in lambdas:
        intervention.set(lam)
        value = validation_metric(model, tokenizer, records, task_def, data, model_cfg, batch_size, precision)
        measured = [{"measure": "validation", "probe_task": None, "metric": task_def["main_metric"], "value": value,
                     "baseline": None, "n_examples": len(records)}]
        measured += forgetting.rows(model, f"{chosen.model_dir} at λ = {lam:g}")
        rows += [{**run, "lambda": float(lam), **m, **common} for m in measured]
        log.info("%s/%s λ=%g: %s", chosen.task, chosen.method, lam, measured)
    return rows


def intruder_intervention(*, runs: Sequence[Mapping], model_dirs: Sequence, metrics_paths: Sequence,
                          methods: Mapping[str, dict], model_cfg: dict, task_defs: Mapping, settings: Mapping,
                          validation_paths: Mapping[str, str], others: Mapping[str, dict], intruders_cfg: Mapping,
                          weights_cfg: Mapping, forgetting_cfg: dict | None, text_file, out_path) -> pd.DataFrame:
    """Rule intruder_intervention: the table of the module doc for every adapter method in `methods`
    ({name: spec}; methods whose spec trains every weight are skipped) and every task of
    `intruders_cfg['tasks']` (None: all of `validation_paths`), written to `out_path` and returned.

    `runs`: the grid's runs in the order of `model_dirs`/`metrics_paths`; `settings`: task ->
    {'data', 'representations'}; `others`: task -> {'task_def', 'data', 'representations', 'probe',
    'base', 'probe_model'} of every classification task (the probe-transfer candidates: a run is
    measured on all of them but its own task). intruders_cfg: {'lambdas', 'max_examples', 'tasks'};
    weights_cfg: {'intruder_top_k', 'intruder_epsilon'}. A task without a usable chosen run of a
    method is skipped (logged).
    """
    from ftdrift.analysis.deployment import choose
    from ftdrift.modeling import models

    lambdas = [float(v) for v in intruders_cfg.get("lambdas") or DEFAULT_LAMBDAS]
    wanted = intruders_cfg.get("tasks") or list(validation_paths)
    adapters = {name: tuned.method_of(name, spec) for name, spec in methods.items()}
    adapters = {name: m for name, m in adapters.items() if not m.is_full}
    chosen = choose(runs, model_dirs, metrics_paths, list(validation_paths))
    tokenizer = models.load_tokenizer(model_cfg)
    rows = []
    for task in wanted:
        task_def = task_defs[task]
        records = io.read_jsonl(validation_paths[task])[: int(intruders_cfg.get("max_examples") or 10**9)]
        for name, method in adapters.items():
            if (task, name) not in chosen:
                log.warning("%s/%s: no usable chosen run, skipped", task, name)
                continue
            meta = io.read_json(metrics_paths[[str(d) for d in model_dirs].index(chosen[(task, name)].model_dir)])
            precision = meta["meta"]["precision"]
            forgetting = Forgetting(model_cfg, tokenizer, {t: s for t, s in others.items() if t != task},
                                    forgetting_cfg, text_file, precision)
            rows += intervene_run(chosen[(task, name)], method, model_cfg=model_cfg, task_def=task_def,
                                  data=settings[task]["data"], tokenizer=tokenizer, records=records, lambdas=lambdas,
                                  top_k=int(weights_cfg["intruder_top_k"]),
                                  epsilon=float(weights_cfg["intruder_epsilon"]), forgetting=forgetting,
                                  batch_size=int(meta["meta"]["eval_batch_size"]), precision=precision)
    table = pd.DataFrame(rows, columns=COLUMNS)
    io.write_csv(out_path, table)
    return table
