"""Deployment section: latency and throughput by batch size per serving variant, serving several
tasks at once (N full models vs one base model with N adapters), and the tables — latency,
switching, memory — with the machine and versions they were measured with.

Reads the tables of ftdrift.analysis.deployment (its module doc describes every column). The page
needs no matplotlib: only the figure functions import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from ftdrift.core import io
from ftdrift.report.frames import read_table
from ftdrift.report.html import escape, fmt, html_page, html_table

# multi_task variants; the inference ones are named by the served methods (`variant_name`)
VARIANT_NAME = {
    "full_models": "N full models, each on its examples",
    "adapter_per_task": "one base: set_adapter, then its examples, task by task",
    "mixed_adapter_batch": "one base: mixed-adapter batch (adapter_names=)",
}
MULTI_TASK = tuple(VARIANT_NAME)
# inference variants of an adapter method m: m + suffix (ftdrift.analysis.deployment_cases.Methods)
ADAPTER_SUFFIXES = {"_unmerged": "base + adapter (unmerged)", "_merged": "adapter merged into the base"}
MIB = 2**20


def write_deployment(*, table, memory, summary, outputs: Mapping) -> None:
    """Rule report_deployment: the latency and multi-task figures and the tables page."""
    frame, mem = read_table(table, required=False), read_table(memory, required=False)
    info = io.read_json(summary) if summary and Path(summary).exists() else {}
    plot_latency(frame, outputs["latency"])
    plot_multi_task(frame, outputs["multi_task"])
    io.write_text(outputs["tables"], tables_page(frame, mem, info))


def rows_of(frame: pd.DataFrame | None, section: str) -> pd.DataFrame:
    """The measured (supported) rows of one section."""
    if frame is None or frame.empty:
        return pd.DataFrame()
    sub = frame[(frame.section == section) & frame.supported.astype(bool)]
    return sub.dropna(subset=["p50_ms"])


def served_methods(frame: pd.DataFrame | None) -> tuple[str | None, str | None]:
    """(full method, adapter method) of the inference rows' variants ('<full>', '<adapter>_unmerged')."""
    variants = list(dict.fromkeys(rows_of(frame, "inference").get("variant", pd.Series(dtype=str))))
    adapter = next((v[: -len("_unmerged")] for v in variants if v.endswith("_unmerged")), None)
    full = next((v for v in variants if not any(v.endswith(x) for x in ADAPTER_SUFFIXES)), None)
    return full, adapter


def inference_variants(frame: pd.DataFrame | None) -> list[str]:
    full, adapter = served_methods(frame)
    return [v for v in (full, adapter and f"{adapter}_unmerged", adapter and f"{adapter}_merged") if v]


def variant_name(variant: str) -> str:
    """A legend label: the multi_task names, '<m>: fully fine-tuned model', '<m>: base + adapter (unmerged)'."""
    if variant in VARIANT_NAME:
        return VARIANT_NAME[variant]
    for suffix, name in ADAPTER_SUFFIXES.items():
        if variant.endswith(suffix):
            return f"{variant[: -len(suffix)]}: {name}"
    return f"{variant}: fully fine-tuned model"


def _variant_colors(full: str | None, adapter: str | None) -> dict:
    from ftdrift.report.style import OKABE_ITO, method_color

    full_color = method_color(full) if full else OKABE_ITO["vermillion"]
    adapter_color = method_color(adapter) if adapter else OKABE_ITO["blue"]
    colors = {"full_models": full_color, "adapter_per_task": OKABE_ITO["bluish_green"],
              "mixed_adapter_batch": adapter_color}
    if full:
        colors[full] = full_color
    if adapter:
        colors.update({f"{adapter}_unmerged": adapter_color, f"{adapter}_merged": OKABE_ITO["sky_blue"]})
    return colors


def _plot_panels(sub: pd.DataFrame, panel_key: str, variants, path, title: str, empty: str,
                 colors: Mapping[str, str]) -> None:
    """Per panel (a task or a group's tasks): p50 latency (band to p95, dotted p99; log scale) and
    throughput against batch size (log 2), one line per variant."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogLocator, ScalarFormatter

    from ftdrift.report.style import empty_figure, save

    if sub.empty:
        return empty_figure(path, title, empty)
    panels = list(dict.fromkeys(sub[panel_key]))
    fig, axes = plt.subplots(2, len(panels), figsize=(max(3.6 * len(panels), 8.0), 6.2), squeeze=False,
                             layout="constrained")
    for col, panel in enumerate(panels):
        lat, thr = axes[0][col], axes[1][col]
        for variant in variants:
            s = sub[(sub[panel_key] == panel) & (sub.variant == variant)].sort_values("batch_size")
            if s.empty:
                continue
            c = colors[variant]
            lat.plot(s.batch_size, s.p50_ms, "-o", ms=4, color=c, lw=1.8, label=variant_name(variant))
            lat.fill_between(s.batch_size, s.p50_ms, s.p95_ms, color=c, alpha=0.18, lw=0)
            lat.plot(s.batch_size, s.p99_ms, ":", color=c, lw=1.1)
            thr.plot(s.batch_size, s.examples_per_s, "-o", ms=4, color=c, lw=1.8)
        lat.set_yscale("log")
        thr.set_ylim(bottom=0)
        for ax in (lat, thr):
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(sub.batch_size.unique()), [str(int(b)) for b in sorted(sub.batch_size.unique())])
            ax.minorticks_off()
        # 1-2-5 ticks with plain numbers: a latency range inside one decade still gets labels
        lat.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        lat.yaxis.set_major_formatter(ScalarFormatter())
        lat.set_title(panel)
        thr.set_xlabel("batch size (examples per call)")
    axes[0][0].set_ylabel("latency per call (ms)")
    axes[1][0].set_ylabel("throughput (examples/s)")
    handles = {}
    for ax in axes[0]:  # a variant may be missing from some panels
        handles.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    handles["latency: median (p50)"] = Line2D([], [], color="#555555", marker="o", ms=4, lw=1.8)
    handles["band: p50 to p95"] = plt.Rectangle((0, 0), 1, 1, color="#555555", alpha=0.25)
    handles["dotted: p99"] = Line2D([], [], color="#555555", ls=":", lw=1.1)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=2 if len(panels) < 3 else 3,
               frameon=False)
    fig.suptitle(title)
    save(fig, path)


def plot_latency(frame: pd.DataFrame | None, path) -> None:
    """Per task: the full model, the unmerged and the merged adapter, by batch size."""
    _plot_panels(rows_of(frame, "inference"), "task", inference_variants(frame), path,
                 "Serving one task: latency and throughput by batch size", "no deployment measurements",
                 _variant_colors(*served_methods(frame)))


def plot_multi_task(frame: pd.DataFrame | None, path) -> None:
    """Per group of tasks sharing a task-model class: a batch mixing its tasks, served three ways."""
    _plot_panels(rows_of(frame, "multi_task"), "task", MULTI_TASK, path,
                 "Serving several tasks in one batch (example i from task i mod N)",
                 "no group of tasks shares a task-model class: nothing to mix", _variant_colors(*served_methods(frame)))


def _ms_table(sub: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    cols = keys + ["p50_ms", "p95_ms", "p99_ms", "mean_ms", "iqr_ms", "examples_per_s", "samples",
                   "calls_per_sample", "note"]
    view = sub[[c for c in cols if c in sub]].rename(columns={"examples_per_s": "examples/s"})
    return view.assign(note=view["note"].fillna("")) if "note" in view else view


def memory_view(mem: pd.DataFrame | None) -> pd.DataFrame:
    """Memory rows in MiB."""
    if mem is None or mem.empty:
        return pd.DataFrame()
    view = mem[["group", "layout", "tasks", "n_tasks"]].copy()
    for col in ("param_bytes", "buffer_bytes", "computed_bytes", "measured_bytes"):
        view[col.replace("_bytes", "_MiB")] = mem[col] / MIB
    view["measured as"] = mem["measured_as"]
    return view


def _kpis(info: Mapping) -> str:
    total = info.get("memory", {}).get("all")
    parts = []
    if total:
        parts.append(f'<div class="kpi"><b>{fmt(total["full_models_bytes"] / MIB, 1)} MiB</b>'
                     f'{escape(total["n_tasks"])} full models (weights)</div>')
        parts.append(f'<div class="kpi"><b>{fmt(total["base_plus_adapters_bytes"] / MIB, 1)} MiB</b>'
                     f'base model(s) + {escape(total["n_tasks"])} adapters (of which adapters '
                     f'{fmt(total["adapters_bytes"] / MIB, 2)} MiB)</div>')
    for group in info.get("groups", []):
        if group.get("mixed_batch_supported") is not None:
            verdict = "supported" if group["mixed_batch_supported"] else "not supported"
            parts.append(f'<div class="kpi"><b>{verdict}</b>mixed-adapter batches, {escape(group["group"])}</div>')
    return "".join(parts)


def _facts(info: Mapping) -> str:
    machine, versions, settings = info.get("machine", {}), info.get("versions", {}), info.get("settings", {})
    where = machine.get("gpu_name") or f"{machine.get('cpu_model', '?')}"
    items = [f"device: {machine.get('device', '?')} ({where}), {settings.get('threads', '?')} torch thread(s)",
             "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None),
             f"precision: weights {info.get('precision', {}).get('weights', '?')}, forward passes "
             + ", ".join(f"{t}: {p}" for t, p in info.get("precision", {}).get("compute", {}).items()),
             f"timing: {settings.get('timing', '?')}; min_run_time {settings.get('min_run_time_s', '?')} s per case",
             f"inputs: {settings.get('inputs', '?')}", f"peft: {info.get('peft_mixed_batch', '')}"]
    items += [f"{g['group']} ({', '.join(g['tasks'])}): {g['note']}" for g in info.get("groups", []) if g.get("note")]
    checks = info.get("checks", {})
    items += ["merged vs unmerged adapter, max |Δ output| (float32): "
              + ", ".join(f"{t} {fmt(v)}" for t, v in checks.get("merge_max_abs_diff", {}).items())
              + f" (tolerance {fmt(checks.get('merge_tolerance'))})",
              "mixed batch vs each example's own adapter, max |Δ output|: "
              + (", ".join(f"{g} {fmt(v)}" for g, v in checks.get("mixed_batch_max_abs_diff", {}).items()) or "n/a")]
    return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def tables_page(frame: pd.DataFrame | None, mem: pd.DataFrame | None, info: Mapping) -> str:
    """The Deployment page: key figures, how it was measured, and every table."""
    chosen = pd.DataFrame(info.get("chosen_runs", []))
    if not chosen.empty:
        chosen = chosen[[c for c in ("task", "method", "lr", "batch_size", "seed", "run", "val_main") if c in chosen]]
    ops = frame[frame.section == "adapter_ops"] if frame is not None and not frame.empty else pd.DataFrame()
    multi = frame[frame.section == "multi_task"] if frame is not None and not frame.empty else pd.DataFrame()
    body = ("<h1>Deployment: N fully fine-tuned models vs one base model with N adapters</h1>" + _kpis(info)
            + "<h2>How it was measured</h2>" + _facts(info)
            + "<h2>Served runs (chosen setting, lowest seed)</h2>" + html_table(chosen)
            + "<h2>Serving one task</h2>" + html_table(_ms_table(rows_of(frame, "inference"),
                                                                ["task", "batch_size", "variant"]))
            + "<h2>Serving several tasks in one batch</h2>"
            + html_table(_ms_table(multi, ["task", "batch_size", "variant", "supported"]) if not multi.empty
                         else multi)
            + "<h2>Switching, loading and unloading</h2>"
            + html_table(_ms_table(ops, ["group", "task", "variant"]) if not ops.empty else ops)
            + "<h2>Resident weights</h2>" + html_table(memory_view(mem)))
    return html_page("Deployment", body)
