"""Task metrics: GLUE-style classification metrics, official SQuAD v2.0 scoring,
and a percentile bootstrap for confidence intervals over examples.

``squad_v2`` re-implements the official ``evaluate-v2.0.py`` script (SQuAD
2.0, Rajpurkar et al. 2018) line for line, including its quirks, because the
study compares numbers with published ones:

* answers are normalised (lower-case, drop punctuation, drop the articles
  a/an/the, collapse whitespace) before exact match and token F1;
* a question whose gold answers are all empty *after normalisation* is scored
  against the empty string only, but whether it counts as HasAns or NoAns is
  decided by ``bool(qa["answers"])`` on the raw list (official behaviour);
* exact/F1 are the max over gold answers; totals are ``100 * mean``;
* ``na_probs``: a prediction is replaced by "no answer" when its probability is
  ``> na_prob_thresh`` (default 1.0, i.e. never); ``best_*`` follow the official
  ``find_best_thresh``, which uses the *un-thresholded* raw scores and decides
  "the model answered" by the truthiness of the raw prediction string (so a
  whitespace-only prediction counts as an answer there, although it
  normalises to "" and is exact-correct on a NoAns question).

Missing predictions: the official script prints "Missing prediction for <qid>",
leaves the question out of the raw scores, and then *crashes* with a KeyError
when it builds the HasAns/NoAns breakdown (every question is in one of the two
lists). So the official script never produces numbers when any prediction is
missing. We mirror that by default (``missing="error"``: ValueError listing the
missing ids). ``missing="zero"`` is an explicit, non-official alternative: a
missing question scores 0 (exact and F1) in every average and at every
threshold. Scoring a missing prediction as "" would be wrong, since "" is the
correct answer to unanswerable questions.
"""

from __future__ import annotations

import collections
import json
import os
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "CLASSIFICATION_METRICS",
    "classification_metrics",
    "normalize_answer",
    "squad_v2",
    "squad_v2_per_question",
    "bootstrap_ci",
]


# --------------------------------------------------------------------------- #
# classification
# --------------------------------------------------------------------------- #
def _metric_fns() -> dict[str, Callable[[Any, Any], float]]:
    # Imported lazily: scikit-learn is slow to import and only needed here.
    from sklearn import metrics as skm

    # zero_division=0: a class never predicted gets precision 0 (sklearn's
    # default value too) without a warning flood during sweeps.
    return {
        "accuracy": lambda t, p: skm.accuracy_score(t, p),
        "f1": lambda t, p: skm.f1_score(t, p, average="binary", pos_label=1, zero_division=0),
        "f1_macro": lambda t, p: skm.f1_score(t, p, average="macro", zero_division=0),
        "f1_micro": lambda t, p: skm.f1_score(t, p, average="micro", zero_division=0),
        "precision": lambda t, p: skm.precision_score(
            t, p, average="binary", pos_label=1, zero_division=0
        ),
        "recall": lambda t, p: skm.recall_score(
            t, p, average="binary", pos_label=1, zero_division=0
        ),
        "matthews_corr": lambda t, p: skm.matthews_corrcoef(t, p),
    }


CLASSIFICATION_METRICS = (
    "accuracy", "f1", "f1_macro", "f1_micro", "precision", "recall", "matthews_corr",
)
QA_METRICS = ("exact", "f1")  # SQuAD v2's, in percent (squad_v2)


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    names: Iterable[str],
) -> dict[str, float]:
    """Compute the named metrics with scikit-learn; returns ``{name: float}``.

    Known names: accuracy, f1 (binary, positive label 1), f1_macro, f1_micro,
    precision and recall (binary, positive label 1), matthews_corr.
    """
    names = list(names)
    unknown = [m for m in names if m not in CLASSIFICATION_METRICS]
    if unknown:
        raise ValueError(
            f"unknown metric(s) {unknown}; known: {', '.join(CLASSIFICATION_METRICS)}"
        )
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(
            f"y_true and y_pred must be 1-D of equal length, got {t.shape} and {p.shape}"
        )
    if t.size == 0:
        raise ValueError("y_true is empty")
    fns = _metric_fns()
    return {m: float(fns[m](t, p)) for m in names}


# --------------------------------------------------------------------------- #
# SQuAD v2.0 (official script semantics)
# --------------------------------------------------------------------------- #
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (official)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def _exact(gold: str, pred: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(pred))


def _f1(gold: str, pred: str) -> float:
    g, p = _tokens(gold), _tokens(pred)
    if not g or not p:
        # If either is no-answer, F1 is 1 if they agree, 0 otherwise.
        return float(g == p)
    same = sum((collections.Counter(g) & collections.Counter(p)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def _articles(dataset: Mapping[str, Any] | str | os.PathLike | Sequence[Any]) -> list:
    """The list of articles from a SQuAD JSON dict, its ``data`` list, or a path."""
    if isinstance(dataset, (str, os.PathLike)):
        with open(dataset, encoding="utf-8") as fh:
            dataset = json.load(fh)
    if isinstance(dataset, Mapping):
        if "data" not in dataset:
            raise ValueError("SQuAD dataset dict must have a 'data' key")
        return list(dataset["data"])
    return list(dataset)


def _gold(dataset: Any) -> tuple[dict[str, list[str]], dict[str, bool]]:
    """qid -> gold answers (official filtering) and qid -> has-answer flag."""
    gold: dict[str, list[str]] = {}
    has_ans: dict[str, bool] = {}
    for article in _articles(dataset):
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                qid = qa["id"]
                answers = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])]
                # For unanswerable questions the only correct answer is "".
                gold[qid] = answers or [""]
                has_ans[qid] = bool(qa["answers"])
    if not gold:
        raise ValueError("SQuAD dataset contains no questions")
    return gold, has_ans


def _raw_scores(
    gold: dict[str, list[str]], predictions: Mapping[str, str], missing: str
) -> tuple[dict[str, float], dict[str, float], list[str]]:
    if missing not in ("error", "zero"):
        raise ValueError(f"missing must be 'error' or 'zero', got {missing!r}")
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    absent = []
    for qid, answers in gold.items():
        if qid not in predictions:
            absent.append(qid)
            continue
        pred = predictions[qid]
        exact[qid] = max(_exact(a, pred) for a in answers)
        f1[qid] = max(_f1(a, pred) for a in answers)
    if absent and missing == "error":
        shown = ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else "")
        raise ValueError(
            f"missing predictions for {len(absent)} of {len(gold)} questions ({shown}); "
            "the official SQuAD v2 script cannot score such a file either "
            "(pass missing='zero' to score them as wrong)"
        )
    return exact, f1, absent


def squad_v2_per_question(
    dataset: Mapping[str, Any] | str | os.PathLike,
    predictions: Mapping[str, str],
    missing: str = "error",
) -> dict[str, tuple[int, float]]:
    """Raw per-question ``(exact in {0,1}, f1 in [0,1])`` (no threshold), for bootstrapping.

    ``missing='zero'`` gives missing questions ``(0, 0.0)``; see module doc.
    """
    gold, _ = _gold(dataset)
    exact, f1, _ = _raw_scores(gold, predictions, missing)
    return {qid: (int(exact.get(qid, 0)), float(f1.get(qid, 0.0))) for qid in gold}


def _best_thresh(
    predictions: Mapping[str, str],
    scores: dict[str, float],
    na_probs: Mapping[str, float],
    has_ans: dict[str, bool],
    total: int,
) -> tuple[float, float]:
    """Official ``find_best_thresh``: sweep thresholds in increasing na_prob order."""
    # Start: everything predicted "no answer" -> exactly the (scored) NoAns
    # questions are right. (Official counts all NoAns ids; identical when no
    # prediction is missing, and a missing one is never right under 'zero'.)
    cur = sum(1 for q in scores if not has_ans[q])
    best, best_thresh = cur, 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):  # stable, like official
        if qid not in scores:
            continue
        if has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if predictions[qid] else 0
        cur += diff
        if cur > best:
            best, best_thresh = cur, na_probs[qid]
    return 100.0 * best / total, float(best_thresh)


def squad_v2(
    dataset: Mapping[str, Any] | str | os.PathLike,
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
    missing: str = "error",
) -> dict[str, float | int]:
    """Official SQuAD v2.0 evaluation (see module doc for exact semantics).

    ``dataset``: the SQuAD v2 JSON as a dict (with "data"), or a path to it.
    ``predictions``: qid -> answer text ("" = no answer). ``na_probs``: qid ->
    no-answer probability; when given, ``best_exact``, ``best_exact_thresh``,
    ``best_f1``, ``best_f1_thresh`` are added. Keys: exact, f1, total, then
    HasAns_* / NoAns_* (only if such questions exist), then best_*.
    """
    gold, has_ans = _gold(dataset)
    exact_raw, f1_raw, absent = _raw_scores(gold, predictions, missing)
    probs = na_probs if na_probs is not None else {q: 0.0 for q in predictions}
    lacking = [q for q in exact_raw if q not in probs]
    if lacking:
        raise ValueError(f"na_probs lacks {len(lacking)} predicted questions, e.g. {lacking[0]}")

    def threshold(scores: dict[str, float]) -> dict[str, float]:
        out = {}
        for qid, s in scores.items():
            # Predicted "no answer": right iff the question is unanswerable.
            out[qid] = float(not has_ans[qid]) if probs[qid] > na_prob_thresh else s
        for qid in absent:  # only under missing="zero"
            out[qid] = 0.0
        return out

    exact_t, f1_t = threshold(exact_raw), threshold(f1_raw)

    def summary(qids: list[str]) -> dict[str, float | int]:
        return {
            "exact": 100.0 * sum(exact_t[q] for q in qids) / len(qids),
            "f1": 100.0 * sum(f1_t[q] for q in qids) / len(qids),
            "total": len(qids),
        }

    all_q = list(gold)
    result: dict[str, float | int] = dict(summary(all_q))
    for prefix, flag in (("HasAns", True), ("NoAns", False)):
        qids = [q for q in all_q if has_ans[q] is flag]
        if qids:
            result.update({f"{prefix}_{k}": v for k, v in summary(qids).items()})
    if na_probs is not None:
        best_exact, exact_thresh = _best_thresh(predictions, exact_raw, probs, has_ans, len(all_q))
        best_f1, f1_thresh = _best_thresh(predictions, f1_raw, probs, has_ans, len(all_q))
        result.update(
            best_exact=best_exact,
            best_exact_thresh=exact_thresh,
            best_f1=best_f1,
            best_f1_thresh=f1_thresh,
        )
    return result


# --------------------------------------------------------------------------- #
# bootstrap
# --------------------------------------------------------------------------- #
def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: Any,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``metric_fn(*arrays)`` over examples.

    Each resample draws ``idx = rng.integers(0, n, size=n)`` from
    ``np.random.default_rng(seed)`` (one draw per resample, in order) and
    evaluates ``metric_fn(*(a[idx] for a in arrays))``; the interval is the
    ``(1 -/+ confidence) / 2`` quantiles (numpy's default linear interpolation)
    of the resampled values. Arrays are indexed along their first axis and must
    have equal length.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    arrs = [np.asarray(a) for a in arrays]
    n = len(arrs[0])
    if any(len(a) != n for a in arrs):
        raise ValueError(f"arrays must have equal length, got {[len(a) for a in arrs]}")
    if n == 0:
        raise ValueError("cannot bootstrap empty arrays")
    rng = np.random.default_rng(seed)
    stats = np.empty(int(n_resamples))
    for i in range(int(n_resamples)):
        idx = rng.integers(0, n, size=n)
        stats[i] = metric_fn(*(a[idx] for a in arrs))
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
