"""Baselines per task (ftdrift.analysis.baselines): trivial answers against hand computations,
the linear probe against an independent scikit-learn/numpy computation, the span probe's
decoding (the real rule on the tiny workflow: tests/system/test_baselines_rule.py)."""

import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from ftdrift.analysis import baselines as bl
from ftdrift.representations.frozen import layer_index

SQUAD_KEYS = {"exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact", "NoAns_f1",
              "NoAns_total", "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"}


def qa_record(qid: str, context: str, answer: str | None) -> dict:
    """A prepared SQuAD v2 record; answer None = unanswerable."""
    answers = {"text": [answer] if answer else [], "answer_start": [context.index(answer)] if answer else []}
    return {"id": qid, "title": "t", "context": context, "question": "q?", "answers": answers}


# ----------------------------------------------------------------------------- trivial
def test_majority_class_and_its_scores_by_hand():
    train = [1, 0, 1, 1, 0, 2, 1]  # 1 is the majority (4 of 7)
    dev = [0, 1, 1, 0, 1]
    result = bl.trivial_classification(train, {"dev": dev, "validation": [1, 1, 1, 0]}, ["accuracy", "f1"])
    assert result["name"] == "majority class" and result["answer"] == 1
    # always 1 on dev: 3 of 5 right; precision 3/5, recall 3/3 -> f1 = 2 * 0.6 * 1 / 1.6
    assert result["dev"] == pytest.approx({"accuracy": 0.6, "f1": 0.75})
    assert result["validation"] == pytest.approx({"accuracy": 0.75, "f1": 2 * 0.75 / 1.75})
    assert bl.majority_class([1, 0, 0, 1]) == 0  # ties go to the lower index


def test_always_no_answer_scores_the_noans_share():
    context = "Ada was born in Paris in 1850."
    records = [qa_record("a", context, "Paris"), qa_record("b", context, "1850"), qa_record("c", context, "Ada"),
               qa_record("d", context, None), qa_record("e", context, None)]
    result = bl.trivial_qa({"dev": records, "validation": records[3:]})
    assert result["name"] == "always no answer" and result["answer"] == ""
    dev = result["dev"]
    assert set(dev) == SQUAD_KEYS
    assert dev["exact"] == dev["f1"] == pytest.approx(100 * 2 / 5)
    assert (dev["HasAns_exact"], dev["HasAns_f1"], dev["NoAns_exact"], dev["NoAns_f1"]) == (0, 0, 100, 100)
    assert (dev["total"], dev["HasAns_total"], dev["NoAns_total"]) == (5, 3, 2)
    assert dev["best_f1"] == pytest.approx(40.0)
    assert result["validation"]["exact"] == 100.0 and "HasAns_total" not in result["validation"]


# ----------------------------------------------------------------------------- linear probe on arrays
def _noisy_linear_task(rng, n, w):
    X = rng.normal(size=(n, len(w))) * np.array([1.0, 5.0, 0.2, 3.0, 1.0]) + 2.0
    y = ((X - 2.0) @ w + rng.normal(scale=0.8, size=n) > 0).astype(int)
    return X.astype(np.float32), y


def test_classification_probe_matches_an_independent_computation():
    rng = np.random.default_rng(0)
    w = np.array([1.0, -0.3, 4.0, 0.0, 0.5])
    train, dev, validation = (_noisy_linear_task(rng, n, w) for n in (120, 60, 80))
    Cs = [10.0, 0.001, 0.1]
    result = bl.classification_probe(train, dev, validation, Cs, ["accuracy", "f1"], "accuracy")

    # independently: standardise by hand (population std, as a scaler does), fit, score with numpy
    mean, std = train[0].mean(0), train[0].std(0)
    scaled = {name: (X - mean) / std for name, (X, _) in (("train", train), ("dev", dev), ("validation", validation))}
    fits = {C: LogisticRegression(C=C, solver="lbfgs", max_iter=1000).fit(scaled["train"], train[1]) for C in Cs}
    dev_acc = {C: float(np.mean(fits[C].predict(scaled["dev"]) == dev[1])) for C in Cs}
    best = sorted(Cs, key=lambda C: (-dev_acc[C], C))[0]
    pred = fits[best].predict(scaled["validation"])
    tp = np.sum((pred == 1) & (validation[1] == 1))
    f1 = 2 * tp / (np.sum(pred == 1) + np.sum(validation[1] == 1))

    assert result["dev_by_C"] == pytest.approx({str(C): dev_acc[C] for C in Cs})
    assert list(result["dev_by_C"]) == ["0.001", "0.1", "10.0"]
    assert result["C"] == best
    assert result["validation"]["accuracy"] == pytest.approx(np.mean(pred == validation[1]))
    assert result["validation"]["f1"] == pytest.approx(f1)
    assert result["validation"]["accuracy"] > 0.8  # the features carry the label


def test_choose_C_prefers_the_best_then_the_smallest():
    assert bl.choose_C({0.1: 0.7, 1.0: 0.8, 10.0: 0.8}) == 1.0
    assert bl.choose_C({1.0: math.nan, 10.0: 0.1}) == 10.0


def test_token_sampling_keeps_answers_and_weights_the_rest():
    lengths, starts, ends = [50, 80, 30], [0, 10, 3], [0, 12, 3]
    keep, weights, rate = bl.sample_tokens(lengths, starts, ends, budget=1000)
    assert rate == 1.0 and [list(k) for k in keep] == [list(range(n)) for n in lengths]
    assert all(np.all(w == 1.0) for w in weights)

    keep, weights, rate = bl.sample_tokens(lengths, starts, ends, budget=40)
    again = bl.sample_tokens(lengths, starts, ends, budget=40)
    assert all(np.array_equal(a, b) for a, b in zip(keep, again[0]))  # seeded
    assert rate == pytest.approx((40 - 4) / (160 - 4))
    for k, w, s, e in zip(keep, weights, starts, ends):
        assert s in k and e in k
        labelled = (k == s) | (k == e)
        assert np.all(w[labelled] == 1.0) and np.allclose(w[~labelled], 1 / rate)
    assert 15 < sum(len(k) for k in keep) < 70


def test_weighted_fit_equals_a_fit_on_repeated_rows():
    """The sampled span probe's inverse-probability weights reach both the scaler and the regression."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 3)) * [1.0, 4.0, 0.5] + 1.0
    y = (X[:, 0] + rng.normal(size=60) > 1.0).astype(int)
    weights = np.where(np.arange(60) % 3 == 0, 3.0, 1.0)
    repeat = np.repeat(np.arange(60), weights.astype(int))
    weighted, repeated = bl.fit_probe(1.0, X, y, weights), bl.fit_probe(1.0, X[repeat], y[repeat])
    assert np.allclose(weighted[0].mean_, repeated[0].mean_) and np.allclose(weighted[0].scale_, repeated[0].scale_)
    assert np.allclose(weighted.decision_function(X), repeated.decision_function(X), atol=1e-3)


def test_span_logits_decode_through_the_study_postprocessing():
    """Probes that recognise start/end tokens by a feature decode the right span; padding never wins."""
    context = "Ada was born in Paris"
    offsets = [None, None, (0, 3), (4, 7), (8, 12), (13, 15), (16, 21)]  # [CLS], question, 5 context tokens
    records = [qa_record("x", context, "Paris"), qa_record("y", context, None)]
    rng = np.random.default_rng(0)
    # token features: a start flag and an end flag plus noise; the train set is many such windows
    X = rng.normal(scale=0.1, size=(400, 3))
    is_start, is_end = rng.random(400) < 0.1, rng.random(400) < 0.1
    X[:, 0] += 3 * is_start
    X[:, 1] += 3 * is_end
    probes = bl.fit_span_probes(1.0, X.astype(np.float32), is_start, is_end)

    def window(start: int, end: int, n: int) -> np.ndarray:
        w = rng.normal(scale=0.1, size=(n, 3))
        w[start, 0] += 3
        w[end, 1] += 3
        return w

    windows = [window(6, 6, 7), window(0, 0, 5)]  # "Paris"; no answer (a shorter window: padded)
    start, end = bl.window_logits(probes, windows)
    assert [len(s) for s in start] == [7, 5]
    start, end = bl.pad_logits(start), bl.pad_logits(end)
    assert start.shape == (2, 7) and np.all(np.isinf(start[1, 5:]))
    meta = [{"example_index": 0, "offsets": offsets}, {"example_index": 1, "offsets": offsets[:5]}]
    scores = bl.qa_metrics(records, meta, start, end)
    assert scores["exact"] == 100.0 and scores["HasAns_total"] == scores["NoAns_total"] == 1


# ----------------------------------------------------------------------------- configuration
def test_layer_index_counts_hidden_states_and_names_the_key():
    assert layer_index(-1, 6) == 6 and layer_index(0, 6) == 0 and layer_index(-7, 6) == 0
    with pytest.raises(ValueError, match="'baselines.probe_layer'"):
        layer_index(7, 6)
