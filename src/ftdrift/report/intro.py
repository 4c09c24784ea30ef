"""The study's question and hypotheses in words, from the config: the report's front page
(`snakemake --report`'s workflow description) and the Overview page both say them from here.

Parse-time safe (the front page is written while the workflow is parsed): no pandas, no plotting.
"""

from __future__ import annotations

import os
from pathlib import Path

from ftdrift.core.drift_metrics import metric_info
from ftdrift.study import methods
from ftdrift.study.grid import format_float


def percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.3g}"


def question(analysis: dict, reference: str) -> str:
    """The study question, naming the reference method and the drift measure (analysis.h2_metric)."""
    drift = metric_info(analysis.get("h2_metric", "linear_cka")).drift_formula
    return ("When a pretrained language model is fine-tuned on a task, how far do its layer representations "
            "move away from the base model's, and does each method move them less than the reference method "
            f"({reference}) while reaching comparable task performance? Drift of a layer = {drift} between the "
            "base and the fine-tuned model's representations of a fixed probe set (0 = unchanged).")


def hypotheses(analysis: dict) -> tuple[str, str]:
    """(H1, H2) in words, with the thresholds of the config's analysis section."""
    h1 = (f"a method's validation main metric is at most {percent(analysis.get('h1_max_relative_drop'))} % "
          "(relative) below the reference's")
    h2 = (f"a method's drift (mean over layers at the final snapshot) is at least "
          f"{percent(analysis.get('h2_min_drift_reduction'))} % lower than the reference's; supported only when "
          f"the permutation test over seeds rejects at α = {analysis.get('h2_alpha', 0.05):g} "
          "(Holm-adjusted across every method × task comparison) and the difference exceeds the seed floor")
    return h1, h2


def _rates(values) -> str:
    return ", ".join(format_float(float(v)) for v in values or []) or "none"


def _listed(values) -> str:
    return ", ".join(map(str, values or []))


def _overrides(config: dict) -> str:
    """'; sst2: seeds 42, 43' for the grid keys a task overrides (task_overrides.<task>.grid)."""
    parts = [f"{task}: {key.replace('_', ' ')} {_listed(values)}"
             for task, override in (config.get("task_overrides") or {}).items()
             for key, values in ((override or {}).get("grid") or {}).items() if key in ("seeds", "batch_sizes")]
    return "".join(f"; {part}" for part in parts)


def workflow_rst(config: dict) -> str:
    """The front page of `snakemake --report` (reStructuredText; Snakemake renders it with Jinja2,
    which fills in the Overview's headline labels and the report's categories)."""
    analysis, grid, model = config.get("analysis") or {}, config.get("grid") or {}, config.get("model") or {}
    reference = methods.reference(config)
    h1, h2 = hypotheses(analysis)
    rates = grid.get("learning_rates") or {}
    method_lines = [f"  * ``{name}``{' (the reference)' if name == reference else ''}: {method.describe()}; "
                    f"lr {_rates(rates.get(name, {}).get('classification'))} (classification), "
                    f"{_rates(rates.get(name, {}).get('extractive_qa'))} (extractive QA)"
                    for name, method in methods.from_config(config).items()]
    title = "ftdrift: how fine-tuning methods change a model's representations"
    fixed = "\n".join([
        title, "=" * len(title), "",
        f"**Question**: {question(analysis, reference)}", "",
        f"**H1**: {h1}. **H2**: {h2}.", ""])
    setup = "\n".join([
        f"* **Model**: ``{model.get('name_or_path', '?')}``; **tasks**: {', '.join(config.get('tasks') or [])}",
        "* **Methods**:", "", *method_lines, "",
        f"* **Grid**: batch sizes {_listed(grid.get('batch_sizes'))}; seeds {_listed(grid.get('seeds'))}"
        f"{_overrides(config)}; settings chosen on dev.", ""])
    # config text inside {% raw %}: a method name or path must not read as Jinja
    return "\n".join([
        "{% raw %}", fixed, "{% endraw %}",
        '{% for res in files if res.labels and "H1" in res.labels %}',
        '* **Runs**: {{ res.labels["runs"] }}',
        f'* **H1** (within tolerance of {reference}): {{{{ res.labels["H1"] }}}}',
        f'* **H2** (drifts less than {reference}): {{{{ res.labels["H2"] }}}}',
        "{% else %}", "* No overview computed yet.", "{% endfor %}",
        "{% raw %}", setup, "{% endraw %}",
        "**Results** (left menu):",
        # one line: Snakemake's Jinja drops the newline after a block tag
        '{% for cat in categories %}`{{ cat.name }}`_{{ " · " if not loop.last }}{% endfor %} — start with the '
        "Overview: run counts, verdicts per task, runs that stopped early or failed.", ""])


def write_workflow_rst(config: dict, path: str) -> str:
    """Write `workflow_rst(config)` to `path` when it changed (every job parses the workflow); returns `path`."""
    text, target = workflow_rst(config), Path(path)
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")  # jobs parse concurrently
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, target)
    return path
