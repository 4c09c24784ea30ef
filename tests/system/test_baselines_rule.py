"""The baselines rule (ftdrift.analysis.baselines) on the tiny workflow, run by Snakemake: trivial answers
and linear probes per task, checked against the prepared data (the module's own tests:
tests/analysis/test_baselines.py)."""

import json
from collections import Counter

import numpy as np
import pytest

from ftdrift.core import io
from ftdrift.testing import make_tiny_workdir, run_snakemake

PROBE_KEYS = {"status", "reason", "layer", "pooling", "C", "dev_by_C", "n_train", "dev", "validation", "seconds"}
SQUAD_KEYS = {"exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact", "NoAns_f1",
              "NoAns_total", "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"}


def test_rule_on_the_tiny_workflow(tmp_path):
    workdir = make_tiny_workdir(tmp_path)
    run_snakemake(workdir, "results/baselines/sst2.json", "results/baselines/squad_v2.json")
    data = workdir / "results" / "data"

    sst2 = json.loads((workdir / "results/baselines/sst2.json").read_text())
    assert set(sst2) == {"task", "main_metric", "kind", "trivial", "linear_probe"}
    assert (sst2["task"], sst2["main_metric"], sst2["kind"]) == ("sst2", "accuracy", "classification")
    train = [r["label"] for r in io.read_jsonl(data / "sst2/train.jsonl")]
    counts = Counter(train)
    majority = max(sorted(counts), key=lambda c: counts[c])
    assert sst2["trivial"]["name"] == "majority class" and sst2["trivial"]["answer"] == majority
    for split in ("dev", "validation"):
        labels = np.array([r["label"] for r in io.read_jsonl(data / f"sst2/{split}.jsonl")])
        assert sst2["trivial"][split]["accuracy"] == pytest.approx(np.mean(labels == majority))
    probe = sst2["linear_probe"]
    assert set(probe) == PROBE_KEYS and probe["status"] == "ok"
    assert (probe["layer"], probe["pooling"], probe["n_train"]) == (2, "mean", len(train))  # 2 blocks: -1 = 2
    assert set(probe["dev_by_C"]) == {"0.01", "0.1", "1.0", "10.0"} and probe["C"] in (0.01, 0.1, 1.0, 10.0)
    assert probe["dev_by_C"][str(probe["C"])] == probe["dev"]["accuracy"] == max(probe["dev_by_C"].values())
    assert set(probe["validation"]) == {"accuracy", "f1"} and probe["seconds"] > 0

    squad = json.loads((workdir / "results/baselines/squad_v2.json").read_text())
    assert (squad["kind"], squad["main_metric"]) == ("extractive_qa", "f1")
    assert squad["trivial"]["name"] == "always no answer" and squad["trivial"]["answer"] == ""
    for split in ("dev", "validation"):
        records = io.read_jsonl(data / f"squad_v2/{split}.jsonl")
        no_answer = 100 * np.mean([not r["answers"]["text"] for r in records])
        assert squad["trivial"][split]["exact"] == squad["trivial"][split]["f1"] == pytest.approx(no_answer)
    probe = squad["linear_probe"]
    assert set(probe) == PROBE_KEYS and probe["status"] == "ok" and probe["pooling"] is None
    assert set(probe["validation"]) == set(squad["trivial"]["validation"]) == SQUAD_KEYS
    assert probe["dev_by_C"][str(probe["C"])] == probe["dev"]["f1"]
