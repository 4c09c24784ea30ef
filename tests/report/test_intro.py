"""The report's front page and the Overview say the study question from the config (ftdrift.report.intro)."""

import types

import jinja2

from ftdrift.report import intro
from ftdrift.study import config as study_config


def resolved(**analysis) -> dict:
    cfg = study_config.load_yaml("config/config.yaml")
    cfg.setdefault("analysis", {}).update(analysis)
    cfg["drift"] = {"metrics": ["linear_cka", "procrustes"]}
    return study_config.resolve(cfg)


def render(text: str, files=(), categories=()) -> str:
    # Snakemake renders the workflow description with Jinja2, given `files` and `categories`
    return jinja2.Environment().from_string(text).render(files=list(files), categories=list(categories))


def test_front_page_names_every_method_its_rates_and_the_thresholds():
    cfg = resolved(h1_max_relative_drop=0.05, h2_min_drift_reduction=0.25, h2_metric="procrustes")
    page = render(intro.workflow_rst(cfg), categories=[types.SimpleNamespace(name=n) for n in ("Overview", "Methods")])
    assert "at most 5 % (relative) below" in page and "at least 25 % lower" in page
    assert "Drift of a layer = Procrustes distance" in page and "1 − linear CKA" not in page
    assert "``full`` (the reference): full fine-tuning; lr 3e-4 (classification)" in page
    assert "``lora_all_r32``: LORA r=32 (all-linear)" in page
    assert "sst2: seeds 42, 43" in page  # the embedded default's per-task seeds
    assert "`Overview`_ · `Methods`_ — start with the Overview" in page
    assert "No overview computed yet." in page


def test_front_page_fills_in_the_overview_headline_and_keeps_config_text_literal(tmp_path):
    cfg = resolved()
    cfg["model"] = {**cfg["model"], "name_or_path": "/models/{{ not jinja }}"}
    files = [types.SimpleNamespace(labels={"runs": "15 finished", "H1": "2 supported", "H2": "2 not supported"})]
    page = render(intro.workflow_rst(cfg), files=files)
    assert "* **H1** (within tolerance of full): 2 supported" in page
    assert "``/models/{{ not jinja }}``" in page
    path = tmp_path / "front" / "workflow.rst"
    assert intro.write_workflow_rst(cfg, str(path)) == str(path) and path.read_text() == intro.workflow_rst(cfg)
