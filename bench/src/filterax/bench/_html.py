"""The leaderboard as ONE self-contained HTML page (inline CSS, plots as base64 PNG, no scripts).

Structure (stable, the tests and any tooling rely on it):

- one ``<section class="benchmark" id="section-<slug>">`` per benchmark holding
  ``<table class="leaderboard" id="bench-<slug>" data-benchmark="<name>">``;
- a ``<th data-col="<key>">`` per column (keys of ``_leaderboard.COLUMNS``) and one
  ``<tr data-method="<method>">`` per method, ``class`` containing ``diverged`` and/or
  ``deviates`` where marked;
- the benchmark's plots as ``<img data-plot="<kind>" src="data:image/png;base64,..." alt=...>``.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

from ._leaderboard import (
    COLUMNS,
    DEVIATION_RULE,
    DIVERGENCE_RULE,
    RANKING_RULE,
    LeaderboardRow,
    benchmark_caption,
    benchmark_slugs,
    benchmark_sources,
    benchmark_tables,
    run_info,
)
from ._plots import Plot
from ._version import __version__

__all__ = ["render_html"]

_CSS = """
:root { --fg: #1d1f23; --muted: #5c6370; --line: #d9dce1; --head: #f3f4f6;
        --bad: #fde2e1; --badfg: #a1120b; --warn: #fff4d6; --warnfg: #7a5400; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; padding: 1.5rem 2rem 3rem; max-width: 1700px; background: #fff; }
h1 { font-size: 1.6rem; margin: 0 0 .3rem; }
h2 { font-size: 1.25rem; margin: 2.2rem 0 .3rem; border-bottom: 2px solid var(--line); }
p.meta, p.caption, .rules { color: var(--muted); }
nav a { margin-right: 1rem; }
.table-wrap { overflow-x: auto; }
table.leaderboard { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: .6rem 0;
                    font-size: 13px; }
table.leaderboard th, table.leaderboard td { border: 1px solid var(--line); padding: .25rem .5rem;
                                             vertical-align: top; }
table.leaderboard th { background: var(--head); text-align: left; white-space: nowrap; }
td.num { text-align: right; white-space: nowrap; }
td.col-method { white-space: nowrap; font-weight: 600; }
td.col-config { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px;
                min-width: 18rem; max-width: 28rem; }
td.col-ref_label { min-width: 9rem; }
td.col-ref_citation { white-space: nowrap; }
td.col-ref_rmse_a, th.col-ref_rmse_a, td.col-delta_ref, th.col-delta_ref { background: #f7f9fc; }
tr.deviates td.col-delta_ref, tr.deviates td.col-flags { background: var(--warn);
                                                          color: var(--warnfg); }
tr.diverged td { background: var(--bad); }
tr.diverged td.col-flags { color: var(--badfg); font-weight: 600; }
.flag { display: inline-block; padding: 0 .35rem; border-radius: .25rem; margin: 0 .2rem .1rem 0;
        white-space: nowrap; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: .5rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 12px; }
.sources { color: var(--muted); font-size: 12px; } .sources ol { margin: .2rem 0 0; }
.sources li::marker { content: "[" counter(list-item) "] "; }
dl.runinfo dt { font-weight: 600; } dl.runinfo dd { margin: 0 0 .4rem 1rem; color: var(--muted); }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _row_html(row: LeaderboardRow, slug: str, sources: Sequence[str]) -> str:
    classes = []
    if row.diverged:
        classes.append("diverged")
    if row.deviation is not None and row.deviation.significant:
        classes.append("deviates")
    cls = f' class="{" ".join(classes)}"' if classes else ""
    tds = []
    for col in COLUMNS:
        text = col.text(row)
        kind = "num" if col.numeric else "txt"
        if col.key == "flags" and text:
            inner = "".join(f'<span class="flag">{_e(f)}</span>' for f in text.split("; "))
        elif col.key == "ref_citation" and row.source is not None:
            cit = sources[row.source - 1]
            inner = f'<a href="#src-{slug}-{row.source}" title="{_e(cit)}">{_e(text)}</a>'
        else:
            inner = _e(text)
        tds.append(f'<td class="{kind} col-{col.key}">{inner}</td>')
    return f'<tr data-method="{_e(row.method)}"{cls}>' + "".join(tds) + "</tr>"


def _table_html(bench: str, slug: str, rows: Sequence[LeaderboardRow]) -> str:
    head = "".join(
        f'<th class="col-{c.key}" data-col="{c.key}">{_e(c.header)}</th>' for c in COLUMNS
    )
    sources = benchmark_sources(rows)
    body = "\n".join(_row_html(r, slug, sources) for r in rows)
    html_ = (
        f'<div class="table-wrap"><table class="leaderboard" id="bench-{slug}" '
        f'data-benchmark="{_e(bench)}">\n<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )
    if sources:
        items = "".join(
            f'<li id="src-{slug}-{i}" value="{i}">{_e(cit)}</li>'
            for i, cit in enumerate(sources, 1)
        )
        html_ += f'<div class="sources">Sources:<ol>{items}</ol></div>'
    return html_


def _figure_html(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (
        f'<figure><img data-plot="{_e(plot.kind)}" alt="{_e(plot.alt)}" '
        f'width="{plot.width}" height="{plot.height}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(plot.title)}</figcaption></figure>"
    )


def render_html(results: Mapping[str, Any], *, plots: Sequence[Plot] | None = None) -> str:
    """The leaderboard page. ``plots`` defaults to :func:`filterax.bench._plots.make_plots`."""
    if plots is None:
        from ._plots import make_plots

        plots = make_plots(results)
    tables = benchmark_tables(results)
    slugs = benchmark_slugs(list(tables))
    n_cells = sum(len(r) for r in tables.values())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>filterax leaderboard</title><style>{_CSS}</style></head><body>",
        "<header><h1>filterax leaderboard</h1>",
        f'<p class="meta">{len(tables)} benchmark(s), {n_cells} result(s); '
        f"rendered by filterax-bench {_e(__version__)}.</p>",
        '<div class="rules"><p>' + _e(RANKING_RULE) + "</p><ul>",
        f"<li>{_e(DIVERGENCE_RULE)}</li><li>{_e(DEVIATION_RULE)}</li></ul></div>",
        "<nav>" + "".join(f'<a href="#section-{slugs[b]}">{_e(b)}</a>' for b in tables) + "</nav>",
        "</header><main>",
    ]
    for bench, rows in tables.items():
        s = slugs[bench]
        parts.append(f'<section class="benchmark" id="section-{s}">')
        parts.append(f"<h2>{_e(bench)}</h2>")
        parts.append(f'<p class="caption">{_e(benchmark_caption(rows))}</p>')
        parts.append(_table_html(bench, s, rows))
        figs = [p for p in plots if p.benchmark == bench]
        if figs:
            parts.append(
                '<div class="plots">' + "\n".join(_figure_html(p) for p in figs) + "</div>"
            )
        parts.append("</section>")
    info = run_info(results)
    parts.append('<section id="runs"><h2>Runs</h2><dl class="runinfo">')
    for k, vals in info.items():
        parts.append(f"<dt>{_e(k)}</dt><dd>{_e(', '.join(vals)) if vals else '—'}</dd>")
    parts.append("</dl></section></main></body></html>")
    return "\n".join(parts) + "\n"
