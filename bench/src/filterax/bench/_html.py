"""The leaderboard as ONE self-contained HTML page (inline CSS, plots as base64 PNG, no scripts).

Layout: the verdict sits next to the score and every column fits a 1400 px wide window (no
horizontal scrolling, checked in headless Chromium by the tests); configurations, published setup
labels and every per-seed value (full precision) are in a detail row under each method,
opened by clicking the method's name (a ``<details>`` toggle; browsers without CSS ``:has()``
show the detail rows open). Hovering rmse.a shows its per-seed values; hovering a header shows
the column's definition; hovering a verdict shows its reasons.

Structure (stable, the tests and any tooling rely on it):

- one ``<section class="benchmark" id="section-<slug>">`` per benchmark holding
  ``<table class="leaderboard" id="bench-<slug>" data-benchmark="<name>">``;
- a ``<th data-col="<key>">`` per column shown (keys of ``_leaderboard.COLUMNS``; optional
  columns no row fills are left out) and one ``<tr data-method="<method>">`` per method,
  ``class`` containing ``diverged``, ``deviates`` and/or ``single-seed`` where marked, followed
  by its ``<tr class="detail" data-detail-for="<method>">``;
- the benchmark's plots as ``<figure>`` with ``<img data-plot="<kind>"
  src="data:image/png;base64,..." alt=...>`` and a ``<figcaption>`` saying what is averaged.
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
    RANK_DELTA_RULE,
    RANKING_RULE,
    VI_COST_RULE,
    LeaderboardRow,
    benchmark_caption,
    benchmark_slugs,
    benchmark_sources,
    benchmark_tables,
    detail_facts,
    detail_scores,
    run_info,
    seed_tooltip,
    table_columns,
)
from ._plots import Plot
from ._version import __version__

__all__ = ["render_html"]

_CSS = """
:root { --fg: #1d1f23; --muted: #5c6370; --line: #d9dce1; --head: #f3f4f6;
        --bad: #fde2e1; --badfg: #a1120b; --warn: #fff4d6; --warnfg: #7a5400;
        --ok: #e6f4ea; --okfg: #1e6b34; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; padding: 1.2rem 1.5rem 3rem; max-width: 1800px; background: #fff; }
h1 { font-size: 1.5rem; margin: 0 0 .2rem; }
h2 { font-size: 1.2rem; margin: 1.8rem 0 .2rem; border-bottom: 2px solid var(--line); }
p.meta, p.caption, .rules { color: var(--muted); }
.rules { font-size: 12px; } .rules p, .rules ul { margin: .2rem 0; } .rules li { margin: .1rem 0; }
nav a { margin-right: 1rem; }
.table-wrap { overflow-x: auto; max-width: 100%; }
table.leaderboard { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: .4rem 0;
                    font-size: 13px; }
table.leaderboard th, table.leaderboard td { border: 1px solid var(--line);
                                             padding: .2rem .45rem; vertical-align: top; }
table.leaderboard th { background: var(--head); text-align: left; white-space: nowrap;
                       cursor: help; }
th.num { text-align: right; }
td.num { text-align: right; white-space: nowrap; }
td.col-method { white-space: nowrap; font-weight: 600; }
td.col-method summary { cursor: pointer; }
td.col-rmse_a { font-weight: 600; cursor: help; }
td.col-verdict { min-width: 6.5rem; max-width: 13rem; }
td.col-ref_rmse_a, th.col-ref_rmse_a, td.col-delta_ref, th.col-delta_ref { background: #f7f9fc; }
.flag { display: inline-block; padding: 0 .35rem; border-radius: .25rem; }
tr.deviates td.col-verdict .flag, tr.deviates td.col-delta_ref { background: var(--warn);
                                                                  color: var(--warnfg); }
tr.consistent td.col-verdict .flag { background: var(--ok); color: var(--okfg); }
tr.diverged > td { background: var(--bad); }
tr.diverged td.col-verdict .flag { color: var(--badfg); font-weight: 700; }
tr.single-seed td.col-verdict { color: var(--muted); font-style: italic; }
tr:has(> td details.more:not([open])) + tr.detail { display: none; }
tr.detail > td { background: #fafbfc; font-size: 12px; padding: .4rem .8rem .6rem; }
tr.detail dl { display: grid; grid-template-columns: max-content 1fr; gap: .1rem .8rem;
               margin: 0 0 .4rem; }
tr.detail dt { font-weight: 600; } tr.detail dd { margin: 0; overflow-wrap: anywhere; }
tr.detail dd.config { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
table.seeds { border-collapse: collapse; font-family: ui-monospace, SFMono-Regular, Menlo,
              monospace; font-size: 11px; }
table.seeds th, table.seeds td { border: 1px solid var(--line); padding: .05rem .4rem;
                                 text-align: right; white-space: nowrap; }
table.seeds th { background: var(--head); font-family: system-ui, sans-serif; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: .5rem 0; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 12px; max-width: 60rem; }
figcaption b { color: var(--fg); }
.sources { color: var(--muted); font-size: 12px; } .sources ol { margin: .2rem 0 0; }
.sources li::marker { content: "[" counter(list-item) "] "; }
table.experiments { border-collapse: collapse; font-size: 13px; margin: .4rem 0;
                    font-variant-numeric: tabular-nums; }
table.experiments th, table.experiments td { border: 1px solid var(--line); padding: .2rem .45rem;
                                             vertical-align: top; }
table.experiments th { background: var(--head); text-align: left; }
table.experiments tr.pass td.verdict { background: var(--ok); color: var(--okfg); }
table.experiments tr.fail td.verdict { background: var(--bad); color: var(--badfg); }
table.experiments tr.info td { color: var(--muted); }
dl.runinfo dt { font-weight: 600; } dl.runinfo dd { margin: 0 0 .4rem 1rem; color: var(--muted); }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _row_classes(row: LeaderboardRow, verdict: str) -> list[str]:
    classes = []
    if row.diverged:
        classes.append("diverged")
    if row.deviates:
        classes.append("deviates")
    if verdict == "≈ ref":
        classes.append("consistent")
    if verdict == "1 seed":
        classes.append("single-seed")
    return classes


def _detail_html(row: LeaderboardRow, sources: Sequence[str], n_cols: int) -> str:
    facts = "".join(
        f"<dt>{_e(label)}</dt><dd{' class=config' if label == 'config' else ''}>{_e(text)}</dd>"
        for label, text in detail_facts(row, sources)
    )
    seeds = [str(s) for s in (row.cell.get("seeds") or ())]
    per = detail_scores(row)
    table = ""
    if per:
        head = "".join(f"<th>seed {_e(s)}</th>" for s in seeds)
        body = "".join(
            f"<tr><th>{_e(label)}</th>"
            + "".join(f"<td>{_e(v)}</td>" for v in vals)
            + f"<td>{_e(mean)}</td><td>{_e(std)}</td></tr>"
            for label, vals, mean, std in per
        )
        table = (
            f'<table class="seeds"><thead><tr><th></th>{head}<th>mean</th><th>std</th></tr>'
            f"</thead><tbody>{body}</tbody></table>"
        )
    return (
        f'<tr class="detail" data-detail-for="{_e(row.method)}"><td colspan="{n_cols}">'
        f"<dl>{facts}</dl>{table}</td></tr>"
    )


def _row_html(row: LeaderboardRow, slug: str, sources: Sequence[str], cols) -> str:
    tds = []
    verdict = ""
    for col in cols:
        text = col.text(row)
        kind = "num" if col.numeric else "txt"
        title = ""
        if col.key == "verdict":
            verdict = text
            inner = f'<span class="flag">{_e(text)}</span>' if text != "—" else "—"
            why = row.divergence.explanation() if row.diverged else ""
            title = f' title="{_e(why)}"' if why else ""
        elif col.key == "method":
            inner = f'<details class="more"><summary>{_e(text)}</summary></details>'
            title = ' title="click for the configuration and per-seed values"'
        elif col.key == "rmse_a":
            inner = _e(text)
            tip = seed_tooltip(row)
            title = f' title="{_e(tip)}"' if tip else ""
        elif col.key == "ref_rmse_a" and row.source is not None:
            cit = sources[row.source - 1]
            value, _, _ = text.rpartition(" ")
            link = f'<a href="#src-{slug}-{row.source}" title="{_e(cit)}">[{row.source}]</a>'
            inner = (_e(value) + " " if value else "") + link
        else:
            inner = _e(text)
        tds.append(f'<td class="{kind} col-{col.key}"{title}>{inner}</td>')
    classes = _row_classes(row, verdict)
    cls = f' class="{" ".join(classes)}"' if classes else ""
    main = f'<tr data-method="{_e(row.method)}"{cls}>' + "".join(tds) + "</tr>"
    return main + "\n" + _detail_html(row, sources, len(cols))


def _table_html(bench: str, slug: str, rows: Sequence[LeaderboardRow]) -> str:
    cols = table_columns(rows, COLUMNS)
    head = "".join(
        f'<th class="{"num" if c.numeric else "txt"} col-{c.key}" data-col="{c.key}"'
        + (f' title="{_e(c.doc)}"' if c.doc else "")
        + f">{_e(c.header)}</th>"
        for c in cols
    )
    sources = benchmark_sources(rows)
    body = "\n".join(_row_html(r, slug, sources, cols) for r in rows)
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
        f"<figcaption><b>{_e(plot.title)}.</b> {_e(plot.caption)}</figcaption></figure>"
    )


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return "—" if x is None else str(x)
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, list):
        return "[" + ", ".join(_fmt(v) for v in x) + "]"
    return str(x)


def _target_text(t: Mapping[str, Any]) -> str:
    value = t.get("value")
    if t.get("comparison") == "in" and isinstance(value, list):
        return f"in [{_fmt(value[0])}, {_fmt(value[1])}]"
    if isinstance(value, str):
        return f"{t.get('comparison')} {value} = {_fmt(t.get('reference'))}"
    return f"{t.get('comparison')} {_fmt(value)}"


def experiments_html(records: Mapping[str, Any], plots: Sequence[Plot]) -> str:
    """The "Experiments" section: per experiment a ``<section class="experiment"
    id="experiment-<name>">`` with ``<table class="experiments" data-experiment="<name>">``,
    one ``<tr class="pass|fail" data-target="<key>">`` per target (✔/✗), and its figures."""
    parts = ['<section id="experiments"><h2>Experiments</h2>']
    n_pass = sum(bool(r.get("passed")) for r in records.values())
    parts.append(
        f'<p class="caption">{len(records)} reproduction experiment(s), {n_pass} with every '
        "target met. Each was trained or swept, then measured against the targets its source "
        "states; a quick-size run is marked (the targets are stated for the full size). "
        "Written by <code>filterax-bench experiments run</code>.</p>"
    )
    for name, rec in records.items():
        size = "quick size" if rec.get("quick") else "full size"
        parts.append(f'<section class="experiment" id="experiment-{_e(name)}">')
        parts.append(f"<h3>{_e(name)}: {_e(rec.get('title', ''))}</h3>")
        parts.append(
            f'<p class="caption">{_e(rec.get("citation", ""))}. <b>{_e(size)}</b>: '
            f"{_e(rec.get('size', ''))}; {_e(rec.get('seconds', '?'))} s, finished "
            f"{_e(rec.get('finished', '?'))}.</p>"
        )
        rows = []
        for t in rec.get("targets") or ():
            ok = bool(t.get("passed"))
            rows.append(
                f'<tr class="{"pass" if ok else "fail"}" data-target="{_e(t.get("key"))}">'
                f"<td><code>{_e(t.get('key'))}</code></td>"
                f'<td class="num">{_e(_fmt(t.get("measured")))}</td>'
                f"<td>{_e(_target_text(t))}</td>"
                f'<td class="verdict">{"✔" if ok else "✗"}</td>'
                f"<td>{_e(t.get('source', ''))}</td></tr>"
            )
        for key, value in (rec.get("summary") or {}).items():
            rows.append(
                f'<tr class="info" data-summary="{_e(key)}"><td><code>{_e(key)}</code></td>'
                f'<td class="num">{_e(_fmt(value))}</td><td>—</td><td></td>'
                "<td>measured, no target</td></tr>"
            )
        if rows:
            parts.append(
                f'<table class="experiments" data-experiment="{_e(name)}"><thead><tr>'
                "<th>measured</th><th>value</th><th>target</th><th></th><th>source</th>"
                "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
            )
        figs = [p for p in plots if p.benchmark == name]
        if figs:
            parts.append(
                '<div class="plots">' + "\n".join(_figure_html(p) for p in figs) + "</div>"
            )
        parts.append("</section>")
    parts.append("</section>")
    return "\n".join(parts)


def render_html(
    results: Mapping[str, Any],
    *,
    plots: Sequence[Plot] | None = None,
    experiments: Mapping[str, Any] | None = None,
    experiment_plots: Sequence[Plot] | None = None,
) -> str:
    """The leaderboard page. ``plots`` defaults to :func:`filterax.bench._plots.make_plots`;
    with `experiments` (the records of ``experiments.json``) an "Experiments" section follows
    the benchmarks (``experiment_plots`` defaults to
    :func:`filterax.bench._experiment_plots.make_experiment_plots`)."""
    if plots is None:
        from ._plots import make_plots

        plots = make_plots(results)
    if experiments and experiment_plots is None:
        from ._experiment_plots import make_experiment_plots

        experiment_plots = make_experiment_plots(experiments)
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
        f"rendered by filterax-bench {_e(__version__)}. Click a method for its configuration "
        "and per-seed values; hover rmse.a for its seeds, a verdict for its reasons, a header "
        "for its definition.</p>",
        '<div class="rules"><p>' + _e(RANKING_RULE) + "</p><ul>",
        f'<li id="rule-divergence">{_e(DIVERGENCE_RULE)}</li>',
        f'<li id="rule-reference">{_e(DEVIATION_RULE)}</li>',
        f'<li id="rule-rank-delta">{_e(RANK_DELTA_RULE)}</li>',
        f'<li id="rule-vi-cost">{_e(VI_COST_RULE)}</li></ul></div>',
        "<nav>"
        + "".join(f'<a href="#section-{slugs[b]}">{_e(b)}</a>' for b in tables)
        + ('<a href="#experiments">Experiments</a>' if experiments else "")
        + "</nav>",
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
    if experiments:
        parts.append(experiments_html(experiments, experiment_plots or ()))
    info = run_info(results)
    parts.append('<section id="runs"><h2>Runs</h2><dl class="runinfo">')
    for k, vals in info.items():
        parts.append(f"<dt>{_e(k)}</dt><dd>{_e(', '.join(vals)) if vals else '—'}</dd>")
    parts.append("</dl></section></main></body></html>")
    return "\n".join(parts) + "\n"
