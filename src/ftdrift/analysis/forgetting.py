"""Forgetting: what fine-tuning on one task does to everything else, per run.

out_of_task
    The fine-tuned model's representations of ANOTHER task's probe set against the base model's
    (e.g. the SST-2 model on RTE's probe): every `drift.metrics` value (ftdrift.core.drift_metrics)
    per layer and pooling, and for linear CKA the bootstrap standard error over probe examples
    (std, ddof=1, of `bootstrap_linear_cka` on `probe_resamples(n, drift.bootstrap_resamples, seed=0)`,
    the resamples the drift tables use). The fine-tuned representations are extracted by the code path
    of the base store (ftdrift.representations.base.probe_representations: the other task's
    tokenisation and data settings, its representations.dtype and batch size) in the precision the
    base store records, which must be the run's training precision (as ftdrift.analysis.drift refuses
    to compare snapshots and base across precisions).
probe_transfer
    The other task's frozen linear probe (rule baselines: fitted on the base model's pooled features of
    layer `baselines.probe_layer`, saved as results/baselines/<task>.probe.npz) applied to the base
    store's representations of that task's probe set and to the fine-tuned model's, scored with the
    task's main metric against the probe records' labels: base, finetuned, drop = base - finetuned.
    How much a read-out built on the base model still works after fine-tuning on something else.
    The store's layer axis is `hidden_states` order (0 = embeddings), the probe's layer index too
    (ftdrift.representations.frozen.layer_index). Extractive QA tasks: skipped (their span probe reads
    token features, not pooled ones).
lm
    For families whose checkpoints carry a language-modelling head (ftdrift.study.families causal_lm):
    the mean next-token loss and perplexity of generic text (`forgetting.text_file`) by the base causal
    LM and by the same LM with the run's fine-tuned backbone, the head kept the base's
    (ftdrift.analysis.lm_loss). Skipped, with the reason, for other families or without a text file.

One job per run, for any method; the fine-tuned model is loaded once (ftdrift.analysis.tuned: the
saved full model, or the base task model with the saved adapter, merged).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ftdrift.core import drift_metrics, io, metrics
from ftdrift.study.grid import RUN_KEYS

log = logging.getLogger("ftdrift.analysis.forgetting")

BOOTSTRAP_METRIC = "linear_cka"  # the one estimator whose probe resamples are well defined
BOOTSTRAP_SEED = 0  # the drift tables' resamples: every run of a task resamples the same examples
OUT_OF_TASK_KEYS = ["probe_task", "layer", "layer_name", "pooling", "metric", "value", "bootstrap_se"]
PROBE_TRANSFER_KEYS = ["probe_task", "layer", "pooling", "metric", "base", "finetuned", "drop", "status", "reason"]
LM_KEYS = ["status", "reason", "tokens", "base_loss", "finetuned_loss", "base_perplexity", "finetuned_perplexity"]
NO_TEXT_REASON = "config key forgetting.text_file is null"


def _none_if_nan(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


# ----------------------------------------------------------------------------- arrays
def out_of_task_rows(probe_task: str, base: dict[str, np.ndarray], tuned: dict[str, np.ndarray],
                     layer_names: list[str], metric_names: list[str], n_resamples: int) -> list[dict]:
    """Rows {probe_task, layer, layer_name, pooling, metric, value, bootstrap_se} comparing the
    fine-tuned `tuned` with the base `base` representations ({pooling: [layer, example, hidden]},
    same examples in the same order) layer by layer, every metric of `metric_names`.

    bootstrap_se: linear_cka only (None otherwise, and with n_resamples < 2): the std (ddof=1) of the
    biased linear CKA over `n_resamples` probe resamples (seed 0). A layer whose fine-tuned
    representations are not finite (a diverged run) gets value and bootstrap_se None.
    """
    from ftdrift.core.similarity import bootstrap_linear_cka, probe_resamples

    rows = []
    for pooling in base:
        if pooling not in tuned:
            raise ValueError(f"out-of-task drift on {probe_task}: no fine-tuned representations pooled by {pooling}")
        b, t = base[pooling], tuned[pooling]
        if b.shape != t.shape:
            raise ValueError(f"out-of-task drift on {probe_task} ({pooling}): base {b.shape} vs fine-tuned {t.shape}")
        indices = probe_resamples(b.shape[1], n_resamples, BOOTSTRAP_SEED) if n_resamples >= 2 else None
        for layer in range(b.shape[0]):
            finite = bool(np.isfinite(t[layer]).all())
            if not finite:
                log.warning("%s, layer %d (%s): fine-tuned representations not finite", probe_task, layer, pooling)
            se = None
            if finite and indices is not None and BOOTSTRAP_METRIC in metric_names:
                se = float(np.std(bootstrap_linear_cka(b[layer], t[layer], indices), ddof=1))
            for metric in metric_names:
                value = float(drift_metrics.compute(metric, b[layer:layer + 1], t[None, layer:layer + 1])[0, 0]) \
                    if finite else None
                rows.append({"probe_task": probe_task, "layer": layer, "layer_name": layer_names[layer],
                             "pooling": pooling, "metric": metric, "value": value,
                             "bootstrap_se": se if metric == BOOTSTRAP_METRIC else None})
    return rows


def probe_transfer_row(probe_task: str, probe: dict | None, labels: list[int], base: dict[str, np.ndarray] | None,
                       tuned: dict[str, np.ndarray] | None, main_metric: str, skip_reason: str = "") -> dict:
    """{probe_task, layer, pooling, metric, base, finetuned, drop, status, reason} of a saved probe
    (ftdrift.analysis.baselines.load_probe) applied to the base and the fine-tuned representations
    ({pooling: [layer, example, hidden]}) of `probe_task`'s probe set, scored with `main_metric`
    against `labels`; drop = base - finetuned. status "ok"; "skipped" with the reason when
    `skip_reason` is given, the probe was not fitted, or the fine-tuned features are not finite.
    """
    from ftdrift.analysis.baselines import apply_probe

    row = {"probe_task": probe_task, "layer": None, "pooling": None, "metric": main_metric, "base": None,
           "finetuned": None, "drop": None, "status": "skipped", "reason": skip_reason}
    if skip_reason:
        return row
    row.update(layer=probe["layer"], pooling=probe["pooling"])
    if probe["status"] != "ok":
        return {**row, "reason": f"the base model's probe of {probe_task} was not fitted: {probe['reason']}"}
    if probe["task"] != probe_task:
        raise ValueError(f"the probe given for {probe_task} was fitted on task {probe['task']}")
    layer, pooling = probe["layer"], probe["pooling"]
    if pooling not in base:
        raise ValueError(f"probe of {probe_task} reads {pooling}-pooled features; the base store of {probe_task} "
                         f"holds {sorted(base)}")
    if not 0 <= layer < base[pooling].shape[0]:
        raise ValueError(f"probe of {probe_task} reads hidden state {layer}; the base store of {probe_task} holds "
                         f"{base[pooling].shape[0]} (0 = embeddings)")
    features = tuned[pooling][layer]
    if not np.isfinite(features).all():
        return {**row, "reason": "the fine-tuned model's representations are not finite (a diverged run)"}
    scores = {name: metrics.classification_metrics(labels, apply_probe(probe, reps[pooling][layer]),
                                                   [main_metric])[main_metric]
              for name, reps in (("base", base), ("finetuned", tuned))}
    return {**row, **scores, "drop": scores["base"] - scores["finetuned"], "status": "ok",
            "reason": f"{pooling}-pooled hidden state {layer}, probe C={probe['C']:g}"}


# ----------------------------------------------------------------------------- models
def load_tuned_task_model(model_dir, method, model_cfg: dict, task_def: dict, tokenizer):
    """The run's fine-tuned task model (`method`: a ftdrift.study.methods.Method), float32, eval
    mode, on the GPU when there is one: the saved full model, or the base task model with the saved
    adapter merged in (ftdrift.analysis.tuned.load_tuned), loaded as the checkpoint validator does."""
    import torch

    from ftdrift.analysis import tuned

    model = tuned.load_tuned(model_dir, method, model_cfg, task_def, tokenizer, merge=True)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def backbone_of(task_model):
    """The backbone of a transformers task model (e.g. LlamaModel of LlamaForSequenceClassification):
    what AutoModel loads for the base store."""
    return getattr(task_model, task_model.base_model_prefix)


def _lm_entry(**values) -> dict:
    entry = dict.fromkeys(LM_KEYS)
    entry.update(values)
    return entry


def lm_forgetting(*, model_cfg: dict, backbone, text_file, forgetting_cfg: dict, precision: str,
                  source: str = "the fine-tuned model") -> dict:
    """The "lm" entry: {status, reason, tokens, base_loss, finetuned_loss, base_perplexity,
    finetuned_perplexity, window, precision}. Losses: mean next-token NLL in nats over `tokens`
    predicted tokens of `text_file` (ftdrift.analysis.lm_loss), first with the base causal LM,
    then with `backbone`'s weights in it and the base head. status "skipped" with the reason for a
    family without a language-modelling head, without a text file (`text_file` None) or when the
    checkpoint holds no head weights.
    """
    from ftdrift.analysis import lm_loss
    from ftdrift.modeling import models
    from ftdrift.study import families

    family = families.family(model_cfg)
    if not family.causal_lm:  # forgetting_cfg may be None here: the rule passes it to LM families only
        return _lm_entry(status="skipped", reason=f"family {family.name} has no language-modelling head",
                         precision=precision)
    extra = {"window": forgetting_cfg["window"], "precision": precision}
    if not text_file:
        return _lm_entry(status="skipped", reason=NO_TEXT_REASON, **extra)
    tokenizer = models.load_tokenizer(model_cfg)
    ids = lm_loss.read_text_tokens(text_file, tokenizer, forgetting_cfg["max_tokens"])
    lm, why = lm_loss.load_base_lm(model_cfg)
    if lm is None:
        return _lm_entry(status="skipped", reason=why, **extra)
    score = dict(ids=ids, window=forgetting_cfg["window"], batch_size=forgetting_cfg["batch_size"],
                 precision=precision)
    base_loss, tokens = lm_loss.lm_loss(lm, **score)
    lm_loss.load_backbone(lm, backbone, source)
    tuned_loss, _ = lm_loss.lm_loss(lm, **score)
    log.info("LM loss on %d tokens of %s: base %.4f, fine-tuned backbone %.4f", tokens, text_file, base_loss,
             tuned_loss)
    return _lm_entry(status="ok", reason=f"{Path(text_file).name}: {tokens} predicted tokens in windows of "
                     f"{forgetting_cfg['window']}, base language-modelling head", tokens=tokens,
                     base_loss=_none_if_nan(base_loss), finetuned_loss=_none_if_nan(tuned_loss),
                     base_perplexity=lm_loss.perplexity(_none_if_nan(base_loss)),
                     finetuned_perplexity=lm_loss.perplexity(_none_if_nan(tuned_loss)), **extra)


# ----------------------------------------------------------------------------- the job
def run_forgetting(*, run: dict, method, model_dir, metrics_path, model_cfg: dict, task_def: dict,
                   others: dict[str, dict], drift_cfg: dict, forgetting_cfg: dict, text_file, out_path) -> dict:
    """Everything of the module doc for one run of `method` (a ftdrift.study.methods.Method), written
    atomically to `out_path` as JSON and returned:

    {"run": {RUN_KEYS}, "precision", "run_status",
     "out_of_task": [{probe_task, layer, layer_name, pooling, metric, value, bootstrap_se}],
     "probe_transfer": [{probe_task, layer, pooling, metric, base, finetuned, drop, status, reason}],
     "lm": {status, reason, tokens, base_loss, finetuned_loss, base_perplexity, finetuned_perplexity,
            window, precision}}

    others: {task: {"task_def", "data", "representations" (the task's settings, task_overrides
    applied), "probe" (probe.jsonl), "base" (its base store), "probe_model" (baselines' probe.npz;
    None for extractive QA)}} for every task but the run's own (empty: out_of_task and
    probe_transfer are empty). drift_cfg: {"metrics", "bootstrap_resamples"}; forgetting_cfg: the
    forgetting section (max_tokens, window, batch_size); text_file: None skips the LM step.
    ValueError naming the files when a base store's probe ids or precision do not match.
    """
    from ftdrift.analysis.baselines import load_probe
    from ftdrift.core.store import read_base
    from ftdrift.modeling import models
    from ftdrift.representations.base import probe_representations
    from ftdrift.study.config import task_kind

    meta = io.read_json(metrics_path)["meta"]
    precision = meta["precision"]
    tokenizer = models.load_tokenizer(model_cfg)
    task_model = load_tuned_task_model(model_dir, method, model_cfg, task_def, tokenizer)
    backbone = backbone_of(task_model)
    out_of_task, transfer = [], []
    for other, spec in others.items():
        base, attrs = read_base(spec["base"])
        records = io.read_jsonl(spec["probe"])
        if attrs["probe_ids"] != [r["id"] for r in records]:
            raise ValueError(f"{spec['base']} was taken on another probe set than {spec['probe']}")
        if attrs.get("precision", "fp32") != precision:
            raise ValueError(f"{metrics_path}: the run trained in {precision} but {spec['base']} was taken in "
                             f"{attrs.get('precision')}: out-of-task drift would include the rounding difference. "
                             "Run base_representations where the runs train, or set config key 'training.precision'")
        tuned = probe_representations(backbone, records, tokenizer, spec["task_def"], spec["data"],
                                      spec["representations"], tuple(attrs["poolings"]), precision,
                                      progress=f"{other} probe")
        out_of_task += out_of_task_rows(other, base, tuned, attrs["layer_names"], drift_cfg["metrics"],
                                        drift_cfg["bootstrap_resamples"])
        main = spec["task_def"]["main_metric"]
        if task_kind(spec["task_def"]) == "classification":
            if spec.get("probe_model") is None:
                raise ValueError(f"probe transfer on {other}: no saved probe (results/baselines/{other}.probe.npz)")
            transfer.append(probe_transfer_row(other, load_probe(spec["probe_model"]), [r["label"] for r in records],
                                               base, tuned, main))
        else:
            transfer.append(probe_transfer_row(
                other, None, [], None, None, main,
                skip_reason="extractive QA: its baseline probe is a token-level span probe, not a pooled read-out"))
        log.info("%s: out-of-task drift and probe transfer done", other)
    lm = lm_forgetting(model_cfg=model_cfg, backbone=backbone, text_file=text_file, forgetting_cfg=forgetting_cfg,
                       precision=precision, source=str(model_dir))
    result = {"run": {k: run[k] for k in RUN_KEYS}, "precision": precision, "run_status": meta.get("status"),
              "out_of_task": out_of_task, "probe_transfer": transfer, "lm": lm}
    io.write_json(out_path, result)
    return result


# ----------------------------------------------------------------------------- tables
def forgetting_tables(json_paths) -> dict[str, pd.DataFrame]:
    """Tidy tables of the runs' forgetting JSONs (run_forgetting): {"out_of_task", "probe_transfer",
    "lm"}, each RUN_KEYS (lr as str) then OUT_OF_TASK_KEYS / PROBE_TRANSFER_KEYS / LM_KEYS; one row per
    JSON row (lm: one per run). Missing values are NaN; no paths give empty frames with the columns."""
    rows = {"out_of_task": [], "probe_transfer": [], "lm": []}
    for path in json_paths:
        data = io.read_json(path)
        run = {k: data["run"][k] for k in RUN_KEYS}
        rows["out_of_task"] += [{**run, **{k: r.get(k) for k in OUT_OF_TASK_KEYS}} for r in data["out_of_task"]]
        rows["probe_transfer"] += [{**run, **{k: r.get(k) for k in PROBE_TRANSFER_KEYS}}
                                   for r in data["probe_transfer"]]
        rows["lm"].append({**run, **{k: data["lm"].get(k) for k in LM_KEYS}})
    keys = {"out_of_task": OUT_OF_TASK_KEYS, "probe_transfer": PROBE_TRANSFER_KEYS, "lm": LM_KEYS}
    tables = {}
    for name, table_rows in rows.items():
        frame = pd.DataFrame(table_rows, columns=RUN_KEYS + keys[name])
        frame["lr"] = frame["lr"].astype(str)
        for column in ("value", "bootstrap_se", "base", "finetuned", "drop", "base_loss", "finetuned_loss",
                       "base_perplexity", "finetuned_perplexity"):
            if column in frame:
                frame[column] = pd.to_numeric(frame[column], errors="coerce")
        tables[name] = frame
    return tables
