"""The report package's wiring: each rule script calls its section's entry point; pages need no matplotlib."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys

import pytest

from ftdrift.testing import REPO

SCRIPTS = sorted((REPO / "workflow" / "scripts").glob("report_*.py"))


def test_every_report_rule_has_its_script():
    rules = (REPO / "rules" / "report.smk").read_text()
    assert sorted(p.name for p in SCRIPTS) == sorted(
        f"report_{s}.py" for s in ("overview", "performance", "drift", "weights", "training", "deployment", "similarity",
                                          "forgetting", "methods", "intruder_intervention"))
    for script in SCRIPTS:
        assert f'"../workflow/scripts/{script.name}"' in rules


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_calls_its_entry_point_with_its_arguments(script):
    """The keywords a thin script passes are exactly what its write_* function takes."""
    tree = ast.parse(script.read_text())
    (imported,) = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module.startswith("ftdrift.report.")
                   and n.module != "ftdrift.report.frames"]
    (name,) = [a.name for a in imported.names]
    func = getattr(importlib.import_module(imported.module), name)
    (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]
    inspect.signature(func).bind(**{kw.arg: None for kw in call.keywords})
    assert name == f"write_{script.stem.removeprefix('report_')}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_configures_the_methods_before_it_plots(script):
    """Method order, labels and colours come from the rule's methods slice, set before the entry point runs."""
    tree = ast.parse(script.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    names = [c.func.id for c in sorted(calls, key=lambda c: c.lineno)]
    assert "configure_methods" in names, script.name
    assert names.index("configure_methods") < names.index(f"write_{script.stem.removeprefix('report_')}")
    (configure,) = [c for c in calls if c.func.id == "configure_methods"]
    assert ast.unparse(configure.args[0]) == "snakemake.params.methods"
    rules = (REPO / "rules" / "report.smk").read_text()
    rule = rules.split(f"rule {script.stem}:")[1].split("\nrule ")[0]
    assert "        methods=METHODS_SLICE," in rule


def test_the_report_rules_read_no_legacy_lora_key():
    rules = (REPO / "rules" / "report.smk").read_text()
    assert 'CONFIG["lora"]' not in rules and '"lora"' not in rules


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_reads_what_its_rule_declares(script):
    """Every snakemake.input.X / params.X / output.X a script reads is a name in its rule."""
    rules = (REPO / "rules" / "report.smk").read_text()
    rule = rules.split(f"rule {script.stem}:")[1].split("\nrule ")[0]
    read = {(n.value.attr, n.attr) for n in ast.walk(ast.parse(script.read_text()))
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
            and getattr(n.value.value, "id", None) == "snakemake" and n.value.attr in ("input", "output", "params")
            and n.attr != "items"}
    assert read
    for section, name in read:
        body = rule.split(f"    {section}:\n")[1].split("\n    log:")[0]
        assert re.search(rf"^        {name}=", body, flags=re.M), f"{script.name}: {section}.{name} not in the rule"


def test_pages_and_labels_do_not_import_matplotlib():
    # labels are computed while --report renders; the overview page draws nothing
    code = ("import sys; import ftdrift.report.labels, ftdrift.report.overview, ftdrift.report.html; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env={"PYTHONPATH": str(REPO / "src")})
