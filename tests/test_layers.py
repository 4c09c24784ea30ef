"""The package's layers, bottom up: a module imports only from its own layer or the ones below.

    core             kernels: similarity, spectra, statistics, metrics, loss, precision, stores, I/O
    study            the study's definition: config, task catalog, families, grid and run names
    data             task files, splits, features, QA post-processing
    modeling         tokenizers and task models by family, methods through peft
    representations  extraction, base stores, training snapshots
    training         the fine-tuning recipe, its monitor, work folder, prediction path
    analysis         drift, weight space, checkpoint validation, tables
    report           the HTML report
    launch           commands run before the workflow, at the package root: the cost estimate
                     (ftdrift.estimate), the preflight, the profile install (ftdrift.profiles),
                     and the executor adapters both the preflight and the estimate ask
                     (ftdrift.executors: one module per Snakemake executor)
"""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ftdrift"
LAYERS = ["core", "study", "data", "modeling", "representations", "training", "analysis", "report"]
LAUNCH = ("estimate", "preflight", "profiles", "executors")  # python -m ftdrift.<name> and its adapters: the top layer


def ftdrift_imports(path: Path) -> set[str]:
    """Every ftdrift module `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ftdrift":
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "ftdrift")
    return found


def layer_of(dotted: str) -> int | None:
    parts = dotted.split(".")
    if len(parts) > 1 and parts[1] in LAUNCH:
        return len(LAYERS)
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_sits_in_a_layer():
    loose = sorted(p.name for p in PACKAGE.glob("*.py")
                   if p.name not in ("__init__.py", "smk.py", "testing.py") and p.stem not in LAUNCH)
    assert not loose, f"modules outside the layers: {loose}"
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(LAYERS + ["estimate", "executors"])


def test_no_import_runs_up_the_layers():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = "ftdrift." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        own = layer_of(module)
        for imported in ftdrift_imports(path):
            theirs = layer_of(imported)
            if own is None and theirs is not None:
                # ftdrift.smk (the scripts' start-up) and ftdrift.testing import no module of the
                # layers, only the package root (ftdrift/__init__.py: REPO_ROOT, imports nothing)
                upward.append(f"{module} imports {imported}")
            elif theirs is not None and theirs > own:
                names = LAYERS + ["launch"]
                upward.append(f"{module} ({names[own]}) imports {imported} ({names[theirs]})")
    assert not upward, "\n".join(upward)


# the one place a method is defined; testing.py writes the tiny study's config, as config/*.yaml name methods
METHOD_MODULES = ("study/methods.py", "modeling/methods.py", "testing.py")


def test_no_method_is_named_outside_the_method_modules():
    """Methods are the config's (ftdrift.study.methods): no "full" / "lora" string in the package
    or the rules outside the method modules, so a new method is config only."""
    named = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).as_posix() in METHOD_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in ("full", "lora"):
                named.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    rules = PACKAGE.parents[1] / "rules"
    for path in sorted(rules.glob("*.smk")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"""["'](full|lora)["']""", line):
                named.append(f"rules/{path.name}:{number} {line.strip()}")
    assert not named, "\n".join(named)


def test_no_cluster_executor_is_named_outside_the_executor_modules():
    """Executors are the adapters' (ftdrift.executors): the launch modules (preflight, profiles,
    estimate) name no cluster executor, so a new executor is its profile and one adapter module,
    never a branch elsewhere. (The local executor's name is also the price table's key for jobs on
    this machine, so only the cluster ones are looked for.)"""
    from ftdrift.executors import ADAPTERS, local

    cluster = set(ADAPTERS) - {local.NAME}
    named = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[0] not in LAUNCH or parts[0] == "executors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in cluster:
                named.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert cluster and not named, "\n".join(named)
