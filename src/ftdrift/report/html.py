"""HTML of the report's pages: the page frame and its CSS, tables with status badges, numbers, Markdown."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from markdown_it import MarkdownIt

from ftdrift.report.frames import STATUS_NAME

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:1.5rem;
     color:#1f2328;line-height:1.45;max-width:72rem}
h1{font-size:1.45rem;margin:.2rem 0 .6rem} h2{font-size:1.15rem;margin:1.4rem 0 .4rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.4rem 0 1rem;font-size:.86rem}
th,td{border:1px solid #d0d7de;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#f3f4f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:0 .45rem;border-radius:.6rem;font-size:.8rem;font-weight:600}
.completed{background:#d8efe6;color:#00593f} .stopped_early{background:#fde7d3;color:#8a3b00}
.failed,.missing{background:#f8d7da;color:#842029} .diverged{background:#e9d8f5;color:#4b1d6e}
.supported{background:#d8efe6;color:#00593f} .not_supported{background:#f8d7da;color:#842029}
.inconclusive,.unknown{background:#eceff3;color:#444}
.kpi{display:inline-block;margin:0 1.2rem .6rem 0;padding:.5rem .8rem;border:1px solid #d0d7de;border-radius:.5rem}
.kpi b{font-size:1.3rem;display:block} .muted{color:#57606a;font-size:.85rem} code{font-size:.85rem}
.kpi.alarm{border-color:#842029;background:#f8d7da;color:#842029}
"""

# raw HTML in the Markdown is shown as text, never passed through
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")


def escape(value) -> str:
    return html.escape("" if value is None else str(value))


def fmt(value, digits: int = 3) -> str:
    """A table cell's text: 'n/a' for missing, integers plain, small numbers in scientific notation."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    try:
        if pd.isna(value):
            return "n/a"
    except (TypeError, ValueError):
        pass
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if float(value).is_integer() and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits}f}"
    return str(value)


def html_page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def badge(status: str) -> str:
    key = re.sub(r"[^a-z_]", "", str(status).lower().replace(" ", "_")) or "unknown"
    return f'<span class="badge {key}">{escape(STATUS_NAME.get(status, status))}</span>'


def html_table(frame: pd.DataFrame, badges: Sequence[str] = ()) -> str:
    """`frame` as a table; the `badges` columns as coloured status / verdict badges."""
    if frame is None or frame.empty:
        return '<p class="muted">(none)</p>'
    head = "".join(f"<th>{escape(c)}</th>" for c in frame.columns)
    rows = []
    for _, r in frame.iterrows():
        cells = []
        for c in frame.columns:
            v = r[c]
            if c in badges:
                cells.append(f"<td>{badge(v)}</td>")
            elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
                cells.append(f'<td class="num">{escape(fmt(v))}</td>')
            else:
                cells.append(f"<td>{escape(fmt(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def markdown_html(text: str) -> str:
    """Markdown (summary.md) as HTML, headings one level down: the page's own <h2> holds it."""
    tokens = _MARKDOWN.parse(text)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(int(token.tag[1:]) + 1, 4)}"
    return _MARKDOWN.renderer.render(tokens, _MARKDOWN.options, {})
