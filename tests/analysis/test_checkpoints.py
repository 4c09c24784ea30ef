"""The checkpoint validator on real saved runs of the tiny Llama: reloaded full models and
adapters reproduce their predictions and metrics; tampered outputs and a merge that drops the
update are caught."""

import json

import pytest

from ftdrift.analysis.checkpoints import MERGE_TOLERANCE, validate_run
from ftdrift.analysis.tuned import method_of
from ftdrift.core import io
from ftdrift.training.recipe import finetune


@pytest.fixture(scope="module")
def saved_runs(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for task, method, lr, precision in (("sst2", "full", "1e-3", "fp32"), ("squad_v2", "lora", "5e-2", "fp32"),
                                        ("sst2", "lora", "5e-2", "fp32"), ("squad_v2", "lora", "5e-2", "bf16")):
        out = root / f"{task}-{method}-{precision}"
        kwargs = tiny.run_kwargs(out, task=task, method=method, lr=lr, max_steps=4, save_steps=2, eval_steps=2,
                           precision=precision)
        finetune(**kwargs)
        runs[(task, method, precision)] = (out, kwargs)
    return runs


def validate(out, kwargs, predictions=None, metrics=None):
    workdir = kwargs["data_dir"]
    return validate_run(model_dir=out / "model", metrics_path=metrics or out / "metrics.json",
                        predictions_path=predictions or out / "predictions.json",
                        validation_path=workdir / "validation.jsonl", model_cfg=kwargs["model_cfg"],
                        task_def=kwargs["task_def"], method=method_of(kwargs["run"]["method"], kwargs["method_spec"]),
                        data_settings=kwargs["settings"]["data"])


@pytest.mark.parametrize("run", [("sst2", "full", "fp32"), ("squad_v2", "lora", "fp32"), ("sst2", "lora", "fp32"),
                                 ("squad_v2", "lora", "bf16")])
def test_saved_models_reproduce_their_results(saved_runs, run):
    """Also a bf16 run (autocast on the CPU here, as on a GPU): its saved predictions are
    reproduced in bf16, and the merge is checked in float32 against the float32 unmerged model."""
    out, kwargs = saved_runs[run]
    result = validate(out, kwargs)
    assert result["passed"], result
    assert result["n_examples"] == len(io.read_jsonl(kwargs["data_dir"] / "validation.jsonl"))
    assert result["precision"] == run[2]
    names = [c["check"] for c in result["checks"]]
    if run[1] == "full":
        assert names == ["reloaded model"] and result["merge_max_abs_logit_diff"] is None
    else:
        assert names == ["base model + adapter", "merged adapter"]
        assert 0 <= result["merge_max_abs_logit_diff"] <= MERGE_TOLERANCE
    assert all(c["prediction_mismatches"] == 0 for c in result["checks"])
    assert result["checks"][0]["metric_max_abs_diff"] <= 1e-9  # the reload is exact (merges: within 1e-4)
    json.dumps(result)


def test_tampered_predictions_and_metrics_fail(saved_runs, tmp_path):
    out, kwargs = saved_runs[("sst2", "full", "fp32")]
    predictions = io.read_json(out / "predictions.json")
    first = next(iter(predictions["predictions"]))
    predictions["predictions"][first] = 1 - predictions["predictions"][first]
    io.write_json(tmp_path / "predictions.json", predictions)
    result = validate(out, kwargs, predictions=tmp_path / "predictions.json")
    assert not result["passed"]
    assert result["checks"][0]["prediction_mismatches"] == 1 and result["checks"][0]["mismatched_ids"] == [first]
    assert result["failure"] == f"reloaded model: 1 predictions differ (e.g. {[first]})"

    metrics = io.read_json(out / "metrics.json")
    metrics["validation"]["accuracy"] += 0.01
    io.write_json(tmp_path / "metrics.json", metrics)
    result = validate(out, kwargs, metrics=tmp_path / "metrics.json")
    assert not result["passed"] and result["checks"][0]["metric_max_abs_diff"] == pytest.approx(0.01)
    assert result["failure"] == "reloaded model: metrics differ by up to 0.01"

    (tmp_path / "broken.json").write_text('{"predictions": {')
    result = validate(out, kwargs, predictions=tmp_path / "broken.json")
    assert not result["passed"] and result["failure"].startswith(f"{tmp_path / 'broken.json'} unreadable")


def test_a_merge_that_drops_the_update_fails(saved_runs, monkeypatch):
    from peft.tuners.lora import LoraModel

    out, kwargs = saved_runs[("squad_v2", "lora", "fp32")]
    # unload() removes the adapter without merging it: deployment would serve another model
    monkeypatch.setattr(LoraModel, "merge_and_unload", lambda self, *a, **kw: self.unload())
    result = validate(out, kwargs)
    merge = result["checks"][1]
    assert not result["passed"] and not merge["passed"]
    assert merge["max_abs_logit_diff"] > 1e-3 and result["checks"][0]["passed"]
    assert result["failure"].startswith("merged adapter: merged logits differ by")
