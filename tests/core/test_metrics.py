"""Tests for ftdrift.core.metrics.

Classification metrics are checked against formulas on hand-counted confusion
matrices; SQuAD v2 against values worked out by hand for a small fixture
(every expected number below is derived in the comments).
"""

import json
import math

import numpy as np
import pytest

from ftdrift.core.metrics import (
    bootstrap_ci,
    classification_metrics,
    normalize_answer,
    squad_v2,
    squad_v2_per_question,
)

# ----------------------------------------------------------------------------
# classification
# ----------------------------------------------------------------------------
Y_TRUE = [1, 1, 1, 0, 0, 0, 1, 0, 1, 1]
Y_PRED = [1, 0, 1, 0, 1, 0, 1, 0, 0, 1]
# by hand: TP = 4 (idx 0,2,6,9), FN = 2 (1,8), FP = 1 (4), TN = 3 (3,5,7)
TP, FN, FP, TN = 4, 2, 1, 3


def test_confusion_counts_are_right():
    pairs = list(zip(Y_TRUE, Y_PRED))
    assert (pairs.count((1, 1)), pairs.count((1, 0)), pairs.count((0, 1)), pairs.count((0, 0))) == (
        TP, FN, FP, TN)


def test_classification_metrics_against_confusion_formulas():
    out = classification_metrics(Y_TRUE, Y_PRED, [
        "accuracy", "f1", "f1_macro", "f1_micro", "precision", "recall", "matthews_corr"])
    precision = TP / (TP + FP)  # 0.8
    recall = TP / (TP + FN)  # 2/3
    f1_pos = 2 * TP / (2 * TP + FP + FN)  # 8/11
    f1_neg = 2 * TN / (2 * TN + FN + FP)  # class 0 as positive: 6/9
    mcc = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
    assert out["accuracy"] == pytest.approx(0.7)
    assert out["precision"] == pytest.approx(precision)
    assert out["recall"] == pytest.approx(recall)
    assert out["f1"] == pytest.approx(8 / 11)
    assert out["f1"] == pytest.approx(f1_pos)
    assert out["f1_macro"] == pytest.approx((f1_pos + f1_neg) / 2)
    assert out["f1_micro"] == pytest.approx(0.7)  # single-label: micro F1 == accuracy
    assert out["matthews_corr"] == pytest.approx(10 / math.sqrt(600))
    assert out["matthews_corr"] == pytest.approx(mcc)
    assert all(isinstance(v, float) for v in out.values())


def test_classification_metrics_subset_and_degenerate():
    out = classification_metrics(np.array([0, 0, 1]), np.array([0, 0, 0]), ["precision", "f1"])
    assert set(out) == {"precision", "f1"}
    assert out == {"precision": 0.0, "f1": 0.0}  # nothing predicted positive


def test_classification_metrics_unknown_name():
    with pytest.raises(ValueError, match="bogus"):
        classification_metrics(Y_TRUE, Y_PRED, ["accuracy", "bogus"])
    with pytest.raises(ValueError, match="equal length"):
        classification_metrics([0, 1], [0], ["accuracy"])


# ----------------------------------------------------------------------------
# SQuAD v2
# ----------------------------------------------------------------------------
def _qa(qid, answers):
    return {"id": qid, "question": "?",
            "answers": [{"text": a, "answer_start": 0} for a in answers],
            "is_impossible": not answers}


SQUAD = {
    "version": "v2.0",
    "data": [
        {"title": "A", "paragraphs": [
            {"context": "...", "qas": [
                _qa("q1", ["Denver Broncos", "The Denver Broncos!"]),
                _qa("q2", ["Santa Clara, California", "Levi's Stadium",
                           "Levi's Stadium in the San Francisco Bay Area at Santa Clara, "
                           "California."]),
                _qa("q3", []),
            ]},
            {"context": "...", "qas": [
                _qa("q4", []),
                _qa("q5", ["1,000"]),
            ]},
        ]},
        {"title": "B", "paragraphs": [
            {"context": "...", "qas": [
                _qa("q6", ["an apple", "apples"]),
                _qa("q7", ["blue whale", "the blue whale"]),
                _qa("q8", ["the"]),  # normalises to "": scored against "", but HasAns
                _qa("q9", []),
                _qa("q10", ["rain rain go away"]),
            ]},
        ]},
    ],
}

PREDS = {
    "q1": "Broncos",          # gold "denver broncos": P=1, R=1/2 -> F1 2/3, EM 0
    "q2": "Levi's Stadium in Santa Clara",  # "levis stadium in santa clara" (5 tokens):
    # vs "santa clara california": 2 common -> P 2/5 R 2/3 -> F1 1/2
    # vs "levis stadium": 2 common -> P 2/5 R 1 -> F1 4/7
    # vs the 11-token long answer: 5 common -> P 1 R 5/11 -> F1 10/16 = 0.625 (max). EM 0
    "q3": "",                 # NoAns, abstained: EM 1, F1 1
    "q4": "Paris",            # NoAns, answered: 0, 0
    "q5": "1000",             # punctuation removed: "1000" == "1000": 1, 1
    "q6": "The Apple.",       # -> "apple" == "apple" (from "an apple"): 1, 1
    "q7": "",                 # HasAns, abstained: 0, 0
    "q8": "",                 # gold [""]: 1, 1
    "q9": "  ",               # NoAns; normalises to "": 1, 1 (but truthy for best-thresh)
    "q10": "rain go",         # gold [rain, rain, go, away]: 2 common -> P 1 R 1/2 -> F1 2/3
    "zzz": "extra predictions for unknown ids are ignored",
}
EXACT = {"q1": 0, "q2": 0, "q3": 1, "q4": 0, "q5": 1, "q6": 1, "q7": 0, "q8": 1, "q9": 1, "q10": 0}
F1 = {"q1": 2 / 3, "q2": 0.625, "q3": 1, "q4": 0, "q5": 1, "q6": 1, "q7": 0, "q8": 1, "q9": 1,
      "q10": 2 / 3}
HAS = ["q1", "q2", "q5", "q6", "q7", "q8", "q10"]
NO = ["q3", "q4", "q9"]
NA_PROBS = {"q1": 0.1, "q2": 0.2, "q3": 0.9, "q4": 0.3, "q5": 0.05, "q6": 0.15, "q7": 0.6,
            "q8": 0.95, "q9": 0.4, "q10": 0.5}


def test_normalize_answer():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theater") == "theater"  # articles only as whole words
    assert normalize_answer("  ") == ""


def test_squad_v2_hand_computed():
    out = squad_v2(SQUAD, PREDS)
    assert list(out) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
                         "NoAns_exact", "NoAns_f1", "NoAns_total"]
    assert out["total"] == 10
    assert out["exact"] == pytest.approx(50.0)  # 5 of 10
    # F1 sum: 2/3 + 0.625 + 1 + 0 + 1 + 1 + 0 + 1 + 1 + 2/3 = 6.958333...
    assert out["f1"] == pytest.approx(100 * (4 / 3 + 0.625 + 5) / 10)
    assert out["HasAns_total"] == 7 and out["NoAns_total"] == 3
    assert out["HasAns_exact"] == pytest.approx(100 * 3 / 7)
    assert out["HasAns_f1"] == pytest.approx(100 * (4 / 3 + 0.625 + 3) / 7)
    assert out["NoAns_exact"] == pytest.approx(100 * 2 / 3)
    assert out["NoAns_f1"] == pytest.approx(100 * 2 / 3)


def test_squad_v2_per_question_hand_computed():
    per = squad_v2_per_question(SQUAD, PREDS)
    assert set(per) == set(EXACT)
    for qid in EXACT:
        assert per[qid][0] == EXACT[qid]
        assert per[qid][1] == pytest.approx(F1[qid])


def test_squad_v2_best_threshold_hand_computed():
    out = squad_v2(SQUAD, PREDS, na_probs=NA_PROBS)
    # Official sweep, start = #NoAns = 3, in increasing na_prob order:
    # exact: q5 +1 ->4 (thr .05), q1 +0, q6 +1 ->5 (thr .15), q2 +0, q4 -1 (answered),
    #        q9 -1 ("  " is truthy), q10 0, q7 0, q3 0, q8 +1 -> 4.   best 5/10 at 0.15
    assert out["best_exact"] == pytest.approx(50.0)
    assert out["best_exact_thresh"] == pytest.approx(0.15)
    # f1: 3 +1 (q5) +2/3 (q1) +1 (q6) +0.625 (q2) = 6.291667 at 0.2; then -1, -1,
    #     +2/3, 0, 0, +1 -> 5.958 < best.
    assert out["best_f1"] == pytest.approx(100 * (3 + 1 + 2 / 3 + 1 + 0.625) / 10)
    assert out["best_f1_thresh"] == pytest.approx(0.2)
    # Default na_prob_thresh = 1.0: no prediction is overridden.
    assert out["exact"] == pytest.approx(50.0)
    assert list(out)[-4:] == ["best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]


def test_squad_v2_na_prob_threshold_applied():
    out = squad_v2(SQUAD, PREDS, na_probs=NA_PROBS, na_prob_thresh=0.5)
    # p > 0.5: q3 (NoAns -> right, stays 1), q7 (HasAns -> 0, was 0), q8 (HasAns -> 0, was 1)
    assert out["exact"] == pytest.approx(40.0)
    assert out["f1"] == pytest.approx(100 * (4 / 3 + 0.625 + 4) / 10)
    assert out["HasAns_exact"] == pytest.approx(100 * 2 / 7)
    assert out["NoAns_exact"] == pytest.approx(100 * 2 / 3)


def test_squad_v2_from_path_and_only_has_answers(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(SQUAD))
    assert squad_v2(path, PREDS) == squad_v2(SQUAD, PREDS)
    assert squad_v2(str(path), PREDS)["exact"] == pytest.approx(50.0)
    only_has = {"data": [{"paragraphs": [{"qas": [_qa("a", ["x y"]), _qa("b", ["z"])]}]}]}
    out = squad_v2(only_has, {"a": "x", "b": "z"})
    assert "NoAns_total" not in out and out["HasAns_total"] == 2
    assert out["exact"] == pytest.approx(50.0)
    assert out["f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)


def test_squad_v2_missing_predictions():
    preds = {k: v for k, v in PREDS.items() if k not in ("q10", "q3")}
    # The official script crashes (KeyError) in this situation; we raise clearly.
    with pytest.raises(ValueError, match="missing predictions for 2 of 10"):
        squad_v2(SQUAD, preds)
    with pytest.raises(ValueError, match="missing"):
        squad_v2_per_question(SQUAD, preds)
    out = squad_v2(SQUAD, preds, missing="zero")
    # q3 (was 1/1) and q10 (was 0 / 2/3) now score 0, denominators unchanged.
    assert out["total"] == 10
    assert out["exact"] == pytest.approx(40.0)
    assert out["f1"] == pytest.approx(100 * (2 / 3 + 0.625 + 4) / 10)
    assert out["NoAns_exact"] == pytest.approx(100 / 3)
    per = squad_v2_per_question(SQUAD, preds, missing="zero")
    assert per["q3"] == (0, 0.0) and per["q10"] == (0, 0.0)


def test_squad_v2_na_probs_must_cover_predictions():
    probs = dict(NA_PROBS)
    del probs["q2"]
    with pytest.raises(ValueError, match="na_probs"):
        squad_v2(SQUAD, PREDS, na_probs=probs)


# ----------------------------------------------------------------------------
# bootstrap
# ----------------------------------------------------------------------------
def test_bootstrap_matches_explicit_loop():
    rng = np.random.default_rng(0)
    a = rng.normal(size=40)
    b = rng.integers(0, 2, size=40)

    def metric(x, y):
        return float(np.mean(x * y))

    # Explicit percentile bootstrap following the documented draw order.
    gen = np.random.default_rng(5)
    vals = []
    for _ in range(200):
        idx = gen.integers(0, 40, size=40)
        vals.append(np.mean(a[idx] * b[idx]))
    vals = np.sort(vals)
    # 2.5% / 97.5% quantiles with linear interpolation, written out by hand.
    def q(p):
        pos = p * (len(vals) - 1)
        lo = int(np.floor(pos))
        return vals[lo] + (pos - lo) * (vals[min(lo + 1, len(vals) - 1)] - vals[lo])

    lo, hi = bootstrap_ci(metric, a, b, n_resamples=200, confidence=0.95, seed=5)
    assert lo == pytest.approx(q(0.025), rel=1e-12)
    assert hi == pytest.approx(q(0.975), rel=1e-12)


def test_bootstrap_properties():
    rng = np.random.default_rng(1)
    x = rng.normal(loc=2.0, scale=1.0, size=400)
    lo, hi = bootstrap_ci(np.mean, x, n_resamples=1000, seed=0)
    se = x.std(ddof=1) / np.sqrt(len(x))
    # Percentile interval of the mean ~ mean +- 1.96 se for n = 400.
    assert lo == pytest.approx(x.mean() - 1.96 * se, abs=0.25 * se)
    assert hi == pytest.approx(x.mean() + 1.96 * se, abs=0.25 * se)
    assert bootstrap_ci(np.mean, np.full(10, 3.0), n_resamples=50) == (3.0, 3.0)
    # Same seed -> same interval; different seed -> (almost surely) different.
    assert bootstrap_ci(np.mean, x, n_resamples=100, seed=3) == bootstrap_ci(
        np.mean, x, n_resamples=100, seed=3)
    assert bootstrap_ci(np.mean, x, n_resamples=100, seed=3) != bootstrap_ci(
        np.mean, x, n_resamples=100, seed=4)
    with pytest.raises(ValueError, match="equal length"):
        bootstrap_ci(np.mean, x, x[:5])
