"""Baselines per task: what a fine-tuned model's number means next to a trivial answer and a
linear probe of the frozen base model.

trivial
    classification: the majority class of the (prepared) train split, ties to the lower class
    index; extractive QA: "no answer" ("") to every question (no-answer probability 1). Scored
    with every metric of the task on dev and validation, as the runs' metrics.json reports them
    (classification metrics in [0, 1]; SQuAD v2 official scoring, 0-100, HasAns_/NoAns_/best_ keys).
linear probe
    scikit-learn logistic regression (L2, deterministic solver) on standardised features of the
    frozen base model's hidden-state layer `baselines.probe_layer`, fitted on train (at most
    `baselines.max_train_examples`, a seeded subset), C chosen from `baselines.probe_C` by the
    main metric on dev (ties: the smallest C, the most regularised), scored on validation.

    classification: the pooled features of each example (`baselines.probe_pooling`, null =
    `analysis.h2_pooling`), one multinomial (binary for two classes) regression.

    The fitted classification probe is also saved (`save_probe`, results/baselines/<task>.probe.npz):
    the forgetting rule applies it, frozen, to fine-tuned models' representations (`apply_probe`).

    extractive QA: a token-level span probe. Two binary regressions over every real token of each
    window, start / not start and end / not end, with the labels the fine-tuned models train on
    (ftdrift.data.features.encode_qa_train: a window without the answer points start and end at
    its null position: token 0, or a decoder's appended end-of-sequence token). Two binary models rather than one multinomial over {start, end, other}: a one-token
    answer is a start and an end at once. Their log-odds are the start and end logits, decoded by
    the fine-tuned models' own post-processing (ftdrift.data.qa.postprocess: best valid n-best span
    against the null position's score) and scored with the official SQuAD v2 metric. When the train
    windows hold more than QA_MAX_TRAIN_TOKENS tokens (the study, not the embedded default), every
    start/end token is kept and the other tokens are sampled at one seeded rate r with weight 1/r
    (inverse-probability weights: the weighted loss estimates the loss on all tokens without bias).

The scoring functions work on arrays and records (no model); `run_baselines` adds the forward pass
and the files. Heavy libraries (torch, transformers, scikit-learn) are imported where used.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence

import numpy as np

from ftdrift.core import io, metrics
from ftdrift.data import qa
from ftdrift.study import families
from ftdrift.study.config import task_kind

log = logging.getLogger("ftdrift.analysis.baselines")

SOLVER = "lbfgs"  # deterministic; memory linear in features (the study model has 2048)
MAX_ITER = 1000
QA_MAX_TRAIN_TOKENS = 200_000  # token rows the span probe is fitted on, at most (~1.6 GB at 2048 float32 features)
QA_SAMPLE_SEED = 0
# seeds of prepare_task are split_seed + 0..3; the probe's train subset takes the next one
TRAIN_SUBSET_SEED_OFFSET = 4


def majority_class(labels: Sequence[int]) -> int:
    """The most frequent class index of `labels` (ties: the lowest index). ValueError if empty."""
    if len(labels) == 0:
        raise ValueError("majority_class: no labels")
    return int(np.bincount(np.asarray(labels, dtype=int)).argmax())


def trivial_classification(train_labels: Sequence[int], splits: dict[str, Sequence[int]],
                           metric_names: Iterable[str]) -> dict:
    """The majority class of `train_labels` predicted for every example of each split.

    Returns {"name": "majority class", "answer": class index, split: {metric: value}} for each
    split in `splits` ({split name: gold labels}).
    """
    answer = majority_class(train_labels)
    names = list(metric_names)
    out: dict = {"name": "majority class", "answer": answer}
    for split, labels in splits.items():
        out[split] = metrics.classification_metrics(labels, np.full(len(labels), answer), names)
    return out


def always_no_answer(records: list[dict]) -> dict:
    """Official SQuAD v2 scores of answering "" (no-answer probability 1) to every question of
    `records` (QA records as prepare_data writes them): exact = f1 = 100 x the NoAns share."""
    predictions = {r["id"]: "" for r in records}
    return metrics.squad_v2(qa.records_to_squad(records), predictions, {r["id"]: 1.0 for r in records})


def trivial_qa(splits: dict[str, list[dict]]) -> dict:
    """{"name": "always no answer", "answer": "", split: {metric: value}} for each split of `splits`."""
    return {"name": "always no answer", "answer": "", **{split: always_no_answer(rs) for split, rs in splits.items()}}


# ----------------------------------------------------------------------------- probes (arrays)
def make_probe(C: float):
    """An unfitted pipeline: StandardScaler, then L2 logistic regression with inverse strength `C`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, solver=SOLVER, max_iter=MAX_ITER))


def fit_probe(C: float, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None):
    """`make_probe(C)` fitted on X [rows, features], y [rows] (scaler and regression both weighted)."""
    probe = make_probe(C)
    if sample_weight is None:
        return probe.fit(X, y)
    return probe.fit(X, y, standardscaler__sample_weight=sample_weight,
                     logisticregression__sample_weight=sample_weight)


def choose_C(dev_by_C: dict[float, float]) -> float:
    """The C with the highest dev score; ties (and NaN scores, treated as lowest) go to the smallest C."""
    def key(C):
        score = dev_by_C[C]
        return (-math.inf if math.isnan(score) else score, -C)

    return max(dev_by_C, key=key)


def classification_probe(train: tuple[np.ndarray, np.ndarray], dev: tuple[np.ndarray, np.ndarray],
                         validation: tuple[np.ndarray, np.ndarray], Cs: Iterable[float], metric_names: Iterable[str],
                         main_metric: str) -> dict:
    """Fit a probe per C on train (X [examples, features], y [examples] class indices), choose C on
    dev by `main_metric`, score dev and validation with every metric in `metric_names`.

    Returns {"C", "dev_by_C" ({str(C): main metric on dev}), "dev", "validation", "probe" (the
    fitted pipeline at C: what `save_probe` writes)}.
    """
    names = list(metric_names)
    probes, dev_by_C = {}, {}
    for C in sorted(float(c) for c in Cs):
        probes[C] = fit_probe(C, *train)
        dev_by_C[C] = metrics.classification_metrics(dev[1], probes[C].predict(dev[0]), [main_metric])[main_metric]
    best = choose_C(dev_by_C)
    return {"C": best, "dev_by_C": {str(C): v for C, v in dev_by_C.items()},
            "dev": metrics.classification_metrics(dev[1], probes[best].predict(dev[0]), names),
            "validation": metrics.classification_metrics(validation[1], probes[best].predict(validation[0]), names),
            "probe": probes[best]}


# ----------------------------------------------------------------------------- the saved probe
PROBE_FORMAT = 1  # the npz layout below; bump when it changes


def save_probe(path, *, task: str, main_metric: str, entry: dict, probe=None) -> None:
    """Write a classification probe for reuse, atomically, as an npz of plain arrays (no pickle):

    format (int), task, main_metric, status ("ok" | "not_applicable"), reason (str), layer (int,
    index into hidden_states; -1 = none), pooling (str; "" = none), C (float; nan = none),
    classes [classes] (int), coef [1 (binary) or classes, features], intercept [1 or classes],
    scaler_mean, scaler_scale [features] (StandardScaler's mean_ and scale_, zero variances
    already replaced by 1). Without a fitted `probe` (QA span probes, a single-class train set) the
    arrays are empty and status is "not_applicable" with the reason. `entry`: the JSON's linear_probe.
    """
    fitted = probe is not None and entry["status"] == "ok"
    if fitted:
        scaler, regression = probe.named_steps["standardscaler"], probe.named_steps["logisticregression"]
        arrays = {"classes": np.asarray(regression.classes_, dtype=np.int64),
                  "coef": np.asarray(regression.coef_, dtype=np.float64),
                  "intercept": np.asarray(regression.intercept_, dtype=np.float64),
                  "scaler_mean": np.asarray(scaler.mean_, dtype=np.float64),
                  "scaler_scale": np.asarray(scaler.scale_, dtype=np.float64)}
        status, reason = "ok", entry["reason"]
    else:
        arrays = {"classes": np.zeros(0, np.int64), "coef": np.zeros((0, 0)), "intercept": np.zeros(0),
                  "scaler_mean": np.zeros(0), "scaler_scale": np.zeros(0)}
        status = "not_applicable"
        reason = entry["reason"] if entry["status"] != "ok" else (
            "extractive QA: the token-level span probe is not saved (it reads token features, not pooled ones)")
    with io.atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:  # a handle: np.savez would append .npz to the temporary name
            np.savez(handle, format=np.int64(PROBE_FORMAT), task=np.str_(task), main_metric=np.str_(main_metric),
                     status=np.str_(status), reason=np.str_(reason),
                     layer=np.int64(entry["layer"] if entry["layer"] is not None else -1),
                     pooling=np.str_(entry["pooling"] or ""),
                     C=np.float64(entry["C"] if entry["C"] is not None else np.nan), **arrays)


def load_probe(path) -> dict:
    """A probe written by `save_probe`: {key: value}, scalars as Python values (layer None when -1,
    pooling None when ""). ValueError naming the file when its format is another."""
    with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}
    if int(out.get("format", -1)) != PROBE_FORMAT:
        raise ValueError(f"{path}: probe format {out.get('format')}, expected {PROBE_FORMAT}: re-run rule baselines")
    for key in ("task", "main_metric", "status", "reason", "pooling"):
        out[key] = str(out[key])
    out["layer"] = None if int(out["layer"]) < 0 else int(out["layer"])
    out["pooling"] = out["pooling"] or None
    out["C"] = float(out["C"])
    return out


def apply_probe(probe: dict, X: np.ndarray) -> np.ndarray:
    """Class indices [examples] a saved probe (`load_probe`) predicts for features X [examples,
    features]: standardise with the saved mean/scale, then the logistic regression's decision rule
    (binary: class 1 where the log-odds are > 0; multinomial: the largest score), in float64 as
    scikit-learn's Pipeline.predict. ValueError when the probe was not fitted or the widths differ."""
    if probe["status"] != "ok":
        raise ValueError(f"probe of task {probe['task']} was not fitted: {probe['reason']}")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != probe["coef"].shape[1]:
        raise ValueError(f"probe of task {probe['task']}: features of shape {X.shape}, the probe reads "
                         f"{probe['coef'].shape[1]} per example")
    scores = ((X - probe["scaler_mean"]) / probe["scaler_scale"]) @ probe["coef"].T + probe["intercept"]
    index = (scores[:, 0] > 0).astype(int) if scores.shape[1] == 1 else scores.argmax(axis=1)
    return probe["classes"][index]


def sample_tokens(lengths: Sequence[int], starts: Sequence[int], ends: Sequence[int], budget: int,
                  seed: int = QA_SAMPLE_SEED) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """The token positions of each window the span probe is fitted on, with their weights.

    lengths/starts/ends: per window, its real tokens and the start/end label (token positions).
    All tokens when they number at most `budget`; otherwise every start/end token (weight 1) and
    each other token with probability r (weight 1/r), r chosen so that about `budget` tokens are
    kept, drawn from np.random.default_rng(seed) window by window. Returns (positions per window,
    weights per window, r).
    """
    total = int(np.sum(lengths))
    positives = sum(len({s, e}) for s, e in zip(starts, ends))
    rate = 1.0 if total <= budget else max(budget - positives, 1) / max(total - positives, 1)
    rng = np.random.default_rng(seed)
    keep, weights = [], []
    for length, s, e in zip(lengths, starts, ends):
        positions = np.arange(length)
        if rate < 1.0:
            labelled = (positions == s) | (positions == e)
            positions = positions[labelled | (rng.random(length) < rate)]
        keep.append(positions)
        weights.append(np.where((positions == s) | (positions == e), 1.0, 1.0 / rate))
    return keep, weights, rate


def fit_span_probes(C: float, X: np.ndarray, is_start: np.ndarray, is_end: np.ndarray,
                    sample_weight: np.ndarray | None = None) -> tuple:
    """The (start, end) probes at `C`: binary regressions on token rows X [tokens, features]."""
    return fit_probe(C, X, is_start, sample_weight), fit_probe(C, X, is_end, sample_weight)


def window_logits(probes: tuple, windows: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Start and end logits (log-odds) of each window's tokens; windows: [tokens, features] each."""
    if not windows:
        return [], []
    rows = np.concatenate(windows)
    cuts = np.cumsum([len(w) for w in windows])[:-1]
    start, end = (np.split(p.decision_function(rows).astype(np.float32), cuts) for p in probes)
    return start, end


def pad_logits(rows: list[np.ndarray]) -> np.ndarray:
    """[windows, longest] from per-window logits, padded with -inf: a padding position can never
    enter postprocess's n-best starts or ends (a 0 fill would, next to negative log-odds)."""
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), -np.inf, dtype=np.float32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def qa_metrics(records: list[dict], meta: list[dict], start_logits: np.ndarray, end_logits: np.ndarray) -> dict:
    """Official SQuAD v2 scores of window logits, decoded as the fine-tuned models' are
    (ftdrift.data.qa.postprocess, with its no-answer probabilities): the keys of metrics.json."""
    predictions, na_probs = qa.postprocess(records, meta, start_logits, end_logits)
    return metrics.squad_v2(qa.records_to_squad(records), predictions, na_probs)


# ----------------------------------------------------------------------------- the job
def _probe_entry(**values) -> dict:
    keys = ("status", "reason", "layer", "pooling", "C", "dev_by_C", "n_train", "dev", "validation", "seconds")
    defaults = {"reason": "", "layer": None, "pooling": None, "C": None, "dev_by_C": {}, "n_train": 0,
                "dev": {}, "validation": {}, "seconds": 0.0}
    return {k: values.get(k, defaults.get(k)) for k in keys}


def _batches(features: list[dict], tokenizer, batch_size: int):
    from ftdrift.representations.extract import make_batches

    return make_batches(features, tokenizer, batch_size)


def _classification_linear_probe(model, tokenizer, splits: dict[str, list[dict]], task_def: dict, max_length: int,
                                 cfg: dict, layer: int, pooling: str, precision: str, batch_size: int) -> dict:
    from ftdrift.data.features import encode_probe
    from ftdrift.representations.frozen import pooled_features

    arrays = {}
    for split, records in splits.items():
        features = encode_probe(records, tokenizer, "classification", max_length)
        X = pooled_features(model, _batches(features, tokenizer, batch_size), layer, pooling, precision,
                            progress=f"probe features ({split})")
        arrays[split] = (X, np.array([r["label"] for r in records]))
    if len(np.unique(arrays["train"][1])) < 2:
        return {"status": "not_applicable", "reason": "the probe's train examples hold a single class"}
    fitted = classification_probe(arrays["train"], arrays["dev"], arrays["validation"], cfg["probe_C"],
                                  task_def["metrics"], task_def["main_metric"])
    return {"status": "ok", "reason": (
        f"logistic regression ({SOLVER}, L2) on standardised {pooling}-pooled layer-{layer} features of the frozen "
        f"base model; C chosen on dev by {task_def['main_metric']}"), **fitted}


def _span_train_rows(model, tokenizer, records: list[dict], lengths: tuple, layer: int, precision: str,
                     batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, float]:
    """Token rows of the train windows: X [tokens, hidden], is_start, is_end [tokens] (bool), the
    sample weights (None when every token is kept) and the sampling rate (see sample_tokens)."""
    from ftdrift.data.features import encode_qa_train
    from ftdrift.representations.frozen import model_inputs, token_states

    train = encode_qa_train(records, tokenizer, *lengths).to_dict()
    starts, ends = train["start_positions"], train["end_positions"]
    keep, weights, rate = sample_tokens(train["length"], starts, ends, QA_MAX_TRAIN_TOKENS)
    rows, is_start, is_end = [], [], []
    for chunk, states in token_states(model, _batches(model_inputs(train), tokenizer, batch_size), layer, precision,
                                      progress="probe features (train)"):
        for w, tokens in zip(chunk, states):
            rows.append(tokens[keep[w]])
            is_start.append(keep[w] == starts[w])
            is_end.append(keep[w] == ends[w])
    log.info("span probe: %d token rows from %d windows (sampling rate %.4g)", sum(map(len, rows)), len(starts), rate)
    sample_weight = None if rate == 1.0 else np.concatenate(weights)
    return np.concatenate(rows), np.concatenate(is_start), np.concatenate(is_end), sample_weight, rate


def _span_scores(model, tokenizer, records: list[dict], probes: dict[float, tuple], lengths: tuple,
                 layer: int, precision: str, batch_size: int, split: str) -> dict[float, dict]:
    """Official SQuAD v2 scores of each (start, end) probe pair on `records`: one forward pass whose
    token states are scored batch by batch (a split's token states are never held at once)."""
    from ftdrift.data.features import encode_qa_eval
    from ftdrift.representations.frozen import model_inputs, token_states

    dataset, meta = encode_qa_eval(records, tokenizer, *lengths)
    starts = {C: [None] * len(meta) for C in probes}
    ends = {C: [None] * len(meta) for C in probes}
    for chunk, states in token_states(model, _batches(model_inputs(dataset.to_dict()), tokenizer, batch_size), layer,
                                      precision, progress=f"probe scores ({split})"):
        for C, pair in probes.items():
            for w, start, end in zip(chunk, *window_logits(pair, states)):
                starts[C][w], ends[C][w] = start, end
    return {C: qa_metrics(records, meta, pad_logits(starts[C]), pad_logits(ends[C])) for C in probes}


def _qa_linear_probe(model, tokenizer, splits: dict[str, list[dict]], task_def: dict, data: dict, cfg: dict,
                     layer: int, precision: str, batch_size: int, null_at_end: bool = False) -> dict:
    # the windows' arguments of encode_qa_train / encode_qa_eval, the fine-tuned models' own
    lengths = (data["max_length"]["extractive_qa"], data["doc_stride"], data["max_query_length"], null_at_end)
    X, is_start, is_end, sample_weight, rate = _span_train_rows(model, tokenizer, splits["train"], lengths, layer,
                                                                precision, batch_size)
    probes = {C: fit_span_probes(C, X, is_start, is_end, sample_weight) for C in sorted(map(float, cfg["probe_C"]))}
    del X  # the study's token rows are large; scoring streams
    main = task_def["main_metric"]
    dev = _span_scores(model, tokenizer, splits["dev"], probes, lengths, layer, precision, batch_size, "dev")
    best = choose_C({C: m[main] for C, m in dev.items()})
    validation = _span_scores(model, tokenizer, splits["validation"], {best: probes[best]}, lengths, layer, precision,
                              batch_size, "validation")[best]
    return {"status": "ok", "reason": (
        f"token-level span probe: two binary logistic regressions ({SOLVER}, L2; start / not start, end / not end) "
        f"on standardised layer-{layer} token features of the frozen base model, log-odds decoded by "
        f"ftdrift.data.qa.postprocess (token-0 null score); C chosen on dev by {main}"
        + ("" if rate == 1.0 else f"; non-answer tokens sampled at rate {rate:.4g}, weighted 1/rate")),
        "C": best, "dev_by_C": {str(C): m[main] for C, m in dev.items()}, "dev": dev[best], "validation": validation}


def linear_probe(splits: dict[str, list[dict]], *, model_cfg: dict, task_def: dict, data_settings: dict,
                 batch_size: int, baselines_cfg: dict, pooling: str | None, precision: str) -> tuple[dict, object]:
    """The frozen base model's linear probe: (the "linear_probe" entry of the baselines JSON, the
    fitted scikit-learn pipeline of a classification task or None: QA, or not fitted).

    splits: {"train", "dev", "validation": records}; train is capped at
    `baselines_cfg["max_train_examples"]` (seeded subset, seed data.split_seed + 4). `precision`
    as configured ('auto' resolves on this machine). `pooling`: classification only (None for QA).
    `batch_size`: of the base model's forward passes (representations.batch_size).
    """
    from ftdrift.core.precision import resolve_precision
    from ftdrift.data.tasks import seeded_subset
    from ftdrift.modeling import models
    from ftdrift.representations.frozen import layer_index, load_base_model

    began = time.perf_counter()
    kind = task_kind(task_def)
    if kind == "classification" and pooling is None:
        raise ValueError("linear_probe: a classification task needs a pooling (config 'baselines.probe_pooling', "
                         "null = 'analysis.h2_pooling')")
    precision = resolve_precision(precision)
    train = seeded_subset(splits["train"], baselines_cfg["max_train_examples"],
                          data_settings["split_seed"] + TRAIN_SUBSET_SEED_OFFSET)
    splits = {**splits, "train": train}
    tokenizer = models.load_tokenizer(model_cfg)
    model = load_base_model(model_cfg)
    layer = layer_index(baselines_cfg["probe_layer"], model.config.num_hidden_layers)
    if kind == "classification":
        entry = _classification_linear_probe(model, tokenizer, splits, task_def, data_settings["max_length"][kind],
                                             baselines_cfg, layer, pooling, precision, batch_size)
    else:
        pooling = None
        entry = _qa_linear_probe(model, tokenizer, splits, task_def, data_settings, baselines_cfg, layer, precision,
                                 batch_size, families.qa_null_at_end(model_cfg))
    fitted = entry.pop("probe", None)
    return _probe_entry(layer=layer, pooling=pooling, n_train=len(train), seconds=time.perf_counter() - began,
                        **entry), fitted


def run_baselines(*, task: str, train_path, dev_path, validation_path, out_path, model_cfg: dict, task_def: dict,
                  data_settings: dict, batch_size: int, baselines_cfg: dict, pooling: str | None,
                  precision: str, probe_path=None) -> dict:
    """Both baselines of `task` from its prepared splits, written atomically to `out_path` as

    {"task", "main_metric", "kind": "classification" | "extractive_qa",
     "trivial": {"name", "answer", "dev": {metric: value}, "validation": {...}},
     "linear_probe": {"status": "ok" | "not_applicable", "reason", "layer" (index into hidden_states),
                      "pooling" (null for QA), "C", "dev_by_C": {str(C): main metric on dev}, "n_train",
                      "dev", "validation", "seconds"}}
    and returned. With `probe_path`, the fitted classification probe is saved there (`save_probe`;
    QA and unfitted probes: an npz marked not_applicable).
    """
    splits = {name: io.read_jsonl(path) for name, path in
              (("train", train_path), ("dev", dev_path), ("validation", validation_path))}
    kind = task_kind(task_def)
    scored = {"dev": splits["dev"], "validation": splits["validation"]}
    if kind == "classification":
        trivial = trivial_classification([r["label"] for r in splits["train"]],
                                         {s: [r["label"] for r in rs] for s, rs in scored.items()}, task_def["metrics"])
    else:
        trivial = trivial_qa(scored)
    probe, fitted = linear_probe(splits, model_cfg=model_cfg, task_def=task_def, data_settings=data_settings,
                                 batch_size=batch_size, baselines_cfg=baselines_cfg, pooling=pooling,
                                 precision=precision)
    result = {"task": task, "main_metric": task_def["main_metric"], "kind": kind, "trivial": trivial,
              "linear_probe": probe}
    log.info("%s: trivial %s %.4g, linear probe %s %s (C=%s) in %.1f s", task, trivial["name"],
             trivial["validation"][task_def["main_metric"]], probe["status"],
             probe["validation"].get(task_def["main_metric"]), probe["C"], probe["seconds"])
    if probe_path is not None:
        save_probe(probe_path, task=task, main_metric=task_def["main_metric"], entry=probe, probe=fitted)
    io.write_json(out_path, result)
    return result
