"""Checkpoint validation: does the saved model reproduce the run's own results?

In a fresh process, the run's `model/` folder is reloaded as a user would load it, for any method
(ftdrift.analysis.tuned: the full task model; or the base task model plus the saved adapter with
its trained head) and the validation split is predicted again through the training job's own
prediction path (ftdrift.training.predict: same batches, same precision). The predictions must
equal predictions.json and the metrics metrics.json. For an adapter method the adapter is then
merged into the base weights (`merge_and_unload`, what deployment uses) and the merged model must
give the unmerged model's logits to MERGE_TOLERANCE and the same predictions, in float32 without
TF32.

The result is recorded, not raised: a failed check is a red line in runs.csv, summary.md and
the report's overview (the other runs' tables are still built).
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager

import numpy as np
import torch

from ftdrift.analysis import tuned
from ftdrift.core import io
from ftdrift.modeling import methods, models
from ftdrift.study import families
from ftdrift.study.methods import Method
from ftdrift.training.predict import SplitPrediction, predict_split, predictor

log = logging.getLogger("ftdrift.analysis.checkpoints")

MERGE_TOLERANCE = 1e-4  # largest |logit| difference, merged vs unmerged, float32
# a reloaded model computes what the saved run computed (same code, batches and precision):
# its no-answer probabilities and metrics may differ by JSON round trips only. A merged adapter
# differs by float rounding of W + BA: probabilities and thresholds within MERGE_TOLERANCE.
RELOAD_TOLERANCE = 1e-9


@contextmanager
def exact_float32():
    """No TF32 matmuls inside (TF32 alone moves logits by more than MERGE_TOLERANCE)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def prediction_mismatches(saved: dict, new: dict, tolerance: float) -> list[str]:
    """Ids whose prediction differs (QA: answer text, or no-answer probability beyond `tolerance`)."""
    bad = [qid for qid, value in saved["predictions"].items() if new["predictions"].get(qid) != value]
    bad += [qid for qid in new["predictions"] if qid not in saved["predictions"]]
    for qid, p in saved.get("na_probs", {}).items():
        q = new.get("na_probs", {}).get(qid)
        if q is None or abs(q - p) > tolerance:
            bad.append(qid)
    return sorted(set(bad))


def metric_difference(saved: dict, new: dict) -> float:
    """Largest |difference| over the metrics both hold (inf when one lacks a metric)."""
    keys = set(saved) | set(new)
    diffs = [abs(saved[k] - new[k]) if k in saved and k in new else math.inf for k in keys]
    return max(diffs, default=0.0)


def max_logit_difference(a: SplitPrediction, b: SplitPrediction) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a.logits, b.logits, strict=True))


def _compare(name: str, saved_predictions: dict, saved_metrics: dict, new: SplitPrediction,
             tolerance: float = RELOAD_TOLERANCE) -> dict:
    ids = prediction_mismatches(saved_predictions, new.predictions, tolerance)
    diff = metric_difference(saved_metrics, new.metrics)
    reasons = [f"{len(ids)} predictions differ (e.g. {ids[:3]})"] * bool(ids)
    reasons += [f"metrics differ by up to {diff:.3g}"] * (diff > tolerance)
    return {"check": name, "prediction_mismatches": len(ids), "mismatched_ids": ids[:10],
            "metric_max_abs_diff": diff, "passed": not reasons, "reason": "; ".join(reasons)}


def validate_run(*, model_dir, metrics_path, predictions_path, validation_path, model_cfg: dict,
                 task_def: dict, method: Method, data_settings: dict) -> dict:
    """Reload `model_dir` (saved by a run of `method`), re-predict validation, compare; returns the
    JSON record (see module doc).

    Keys: run, method (the name), precision, n_examples, checks (list of {check, prediction_mismatches,
    mismatched_ids (first 10), metric_max_abs_diff, passed, reason[, max_abs_logit_diff,
    tolerance]}), passed (all checks), failure (why not, '' when passed),
    merge_max_abs_logit_diff (adapter methods; None for full fine-tuning). An unreadable predictions.json is a failed check.
    """
    saved = io.read_json(metrics_path)
    records = io.read_jsonl(validation_path)
    meta = saved["meta"]
    try:
        saved_predictions = io.read_json(predictions_path)
    except ValueError as err:  # unreadable: a failed check, not a crash of the study
        check = {"check": "saved predictions", "passed": False, "reason": f"{predictions_path} unreadable: {err}"}
        log.error("%s", check)
        return {"run": meta["run"], "method": method.name, "precision": meta["precision"], "n_examples": len(records),
                "checks": [check], "passed": False, "failure": check["reason"], "merge_max_abs_logit_diff": None}
    precision, batch_size = meta["precision"], int(meta["eval_batch_size"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = models.load_tokenizer(model_cfg)

    def predict(model, in_precision: str) -> SplitPrediction:
        # the job's own batch pieces, if an out-of-memory error split them: the same pieces, the same bits
        trainer = predictor(model.to(device).eval(), tokenizer, batch_size, in_precision,
                            split_limit=meta.get("eval_split_limit"))
        return predict_split(trainer, records, task_def, tokenizer, data_settings,
                             families.qa_null_at_end(model_cfg))

    def load_saved():
        """A fresh copy of the saved model (accelerate patches a model's forward with the autocast of
        the first predictor that prepares it, so each precision gets its own copy)."""
        return tuned.load_tuned(model_dir, method, model_cfg, task_def, tokenizer)

    model = load_saved()
    reloaded = predict(model, precision)
    checks = [_compare("reloaded model" if method.is_full else "base model + adapter", saved_predictions,
                       saved["validation"], reloaded)]
    merge_diff = None
    if not method.is_full:
        with exact_float32():
            unmerged = reloaded
            if precision != "fp32":
                model = load_saved()
                unmerged = predict(model, "fp32")
            merged = predict(methods.merged(model), "fp32")
        merge_diff = max_logit_difference(unmerged, merged)
        # merged predictions against the saved ones where those are float32, else against the
        # float32 unmerged ones (a bf16 run's saved predictions differ from fp32 by rounding)
        reference = (saved_predictions, saved["validation"]) if precision == "fp32" else (
            unmerged.predictions, unmerged.metrics)
        merge = _compare("merged adapter", *reference, merged, tolerance=MERGE_TOLERANCE)
        if merge_diff > MERGE_TOLERANCE:
            merge["reason"] = "; ".join(filter(None, [f"merged logits differ by {merge_diff:.3g} "
                                                      f"> {MERGE_TOLERANCE:g}", merge["reason"]]))
        merge.update(max_abs_logit_diff=merge_diff, tolerance=MERGE_TOLERANCE, passed=not merge["reason"],
                     # a diverged run's logits can be huge (1e7): float32 rounding of W + BA alone then
                     # exceeds an absolute tolerance; the run is left out of the study's numbers anyway
                     required=meta.get("status") != "diverged")
        checks.append(merge)
    for check in checks:
        (log.info if check["passed"] else log.error)("%s: %s", check["check"], check)
    failure = "; ".join(f"{c['check']}: {c['reason']}" for c in checks
                        if not c["passed"] and c.get("required", True))
    return {"run": meta["run"], "method": method.name, "precision": precision, "n_examples": len(records),
            "checks": checks, "passed": not failure, "failure": failure, "merge_max_abs_logit_diff": merge_diff}
