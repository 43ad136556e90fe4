"""The leaderboard: per-benchmark tables ranked by rmse.a, for a terminal, Markdown and HTML.

Input is the runner's ``results.json`` (``{"schema": 1, "cells": {"<benchmark>/<method>": cell}}``,
numbers as JSON numbers). Everything here is a pure function of that dict, so a leaderboard can be
re-rendered from a results file at any time (``render_all(load_results(path), out_dir)``).

Conventions shared by every rendering:

- **Ranking.** Within a benchmark, cells are sorted by the mean over seeds of rmse.a, ascending.
  Diverged cells (``diverged: true``) go below every non-diverged one, whatever their mean (a mean
  over partly diverged seeds is not comparable); cells whose mean is not finite go last. Ties are
  broken by method name. Ranks are 1, 2, ... in that order.
- **Numbers** are printed with 4 significant digits (``format(x, ".4g")``); missing values as ``—``,
  non-finite ones as ``nan`` / ``inf``. rmse.a is shown as ``mean ± std`` over seeds; the other
  scores as their mean over seeds.
- **Reference deviation.** See :func:`reference_deviation`: a cell is marked ``≠ ref`` when
  ``|ours − ref| > 2·std·sqrt(1 + 1/n_seeds) + 0.03·|ref|``.
- **Divergence** is marked ``DIVERGED`` with the diverged seeds.
- **Reference.** Beside ours: the published rmse.a, ``Δ ref`` = ours − published, the published
  setup's label and its source as a footnote ``[k]``; the citations are listed under each table.
  A cell cites a source only when it has a published value or label.
- **Config**: the hyper-parameters as ``key=value`` sorted by key, less ``family`` (a column).

The Markdown and HTML tables hold every column; the terminal table (:func:`print_leaderboard`,
:func:`render_terminal`) is a compact view of rank, method, rmse.a (std to 2 significant digits),
reference, Δ ref (3 digits), spread.a, milliseconds per cycle (3 digits) and the marks.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._files import read_json, write_bytes_atomic, write_text_atomic

__all__ = [
    "SCHEMA_VERSION",
    "Deviation",
    "LeaderboardRow",
    "benchmark_sources",
    "benchmark_tables",
    "config_summary",
    "format_number",
    "load_results",
    "print_leaderboard",
    "reference_deviation",
    "render_all",
    "render_markdown",
    "render_terminal",
]

SCHEMA_VERSION = 1
MISSING = "—"
DEVIATION_NOISE_FACTOR = 2.0
DEVIATION_REL_TOLERANCE = 0.03
DEVIATION_RULE = (
    "≠ ref: |ours − ref| > 2·std·√(1 + 1/n) + 0.03·|ref|, with std the seed-to-seed standard "
    "deviation of our rmse.a over n seeds. The published number is itself one run with seed noise "
    "of about std, so ours − ref has a standard deviation of about std·√(1 + 1/n); the 3 % term "
    "absorbs the rounding of published values (two significant digits) and differing run lengths."
)
DIVERGENCE_RULE = (
    "DIVERGED: the runner flagged at least one seed as diverged (listed); such cells are ranked "
    "below every non-diverged one."
)
TERMINAL_LEGEND = (
    "Ranked by mean rmse.a over seeds (diverged cells last); rmse.a is mean ± std over seeds. "
    "DIVERGED: a seed diverged. ≠ ref: |ours − ref| > 2·std·√(1 + 1/n) + 0.03·|ref| (beyond seed "
    "noise). rmse.s: smoothed estimate (smoothers only). Configs and every score: "
    "leaderboard.md / leaderboard.html."
)
RANKING_RULE = (
    "Ranked by mean rmse.a over seeds (ascending); diverged cells last. Numbers: 4 significant "
    "digits; rmse.a is mean ± std over seeds, other scores are means over seeds."
)


# ---------------------------------------------------------------------------------------------
# Loading and the table model
# ---------------------------------------------------------------------------------------------


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a results JSON file (or ``<dir>/results.json``) and check its schema."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    results = read_json(p, what="results", fix="rerun `filterax-bench run` to write it")
    try:
        _check_schema(results)
    except ValueError as err:
        raise ValueError(f"{p}: {err}; rerun `filterax-bench run` to write it.") from err
    return results


def _check_schema(results: Mapping[str, Any]) -> None:
    if not isinstance(results, Mapping) or results.get("schema") != SCHEMA_VERSION:
        got = results.get("schema") if isinstance(results, Mapping) else type(results).__name__
        raise ValueError(f"results schema {got!r} is not supported (expected {SCHEMA_VERSION})")
    if not isinstance(results.get("cells"), Mapping):
        raise ValueError("results has no 'cells' mapping")


@dataclass(frozen=True)
class Deviation:
    """Our rmse.a against the published reference: ``delta = ours − ref``."""

    delta: float
    threshold: float

    @property
    def significant(self) -> bool:
        """True when ``|delta|`` exceeds the seed-noise threshold."""
        return abs(self.delta) > self.threshold

    @property
    def direction(self) -> str:
        """``"worse"`` when our error is larger than the reference's, else ``"better"``."""
        return "worse" if self.delta > 0 else "better"


@dataclass(frozen=True)
class LeaderboardRow:
    """One ranked line of a benchmark's table (the cell is the JSON dict, unchanged)."""

    rank: int
    cell: Mapping[str, Any]
    deviation: Deviation | None
    source: int | None = None  # 1-based footnote number of the reference's citation

    @property
    def method(self) -> str:
        return str(self.cell["method"])

    @property
    def diverged(self) -> bool:
        return bool(self.cell.get("diverged", False))


def _num(x: Any) -> float | None:
    """A JSON number as float; None for missing or non-numeric values."""
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, int | float):
        return float(x)
    return None


def metric(cell: Mapping[str, Any], name: str, stat: str = "mean") -> float | None:
    """``cell[name][stat]`` as a float, or None when absent."""
    block = cell.get(name)
    if not isinstance(block, Mapping):
        return None
    return _num(block.get(stat))


def reference_deviation(cell: Mapping[str, Any]) -> Deviation | None:
    """Compare a cell's mean rmse.a with its published reference.

    Rule: ours differs from the reference by more than seed noise when

        |mean − ref| > 2 · std · sqrt(1 + 1/n) + 0.03 · |ref|

    with ``mean``/``std`` our rmse.a over the ``n`` seeds. The published value is one run (one
    truth trajectory), which carries seed noise of about ``std`` itself, so the difference of our
    n-seed mean and that run has standard deviation ``std·sqrt(1 + 1/n)``; twice that is a ~95 %
    band. The ``0.03·|ref|`` term covers published values rounded to two significant digits
    (0.18 stands for 0.175–0.185, ±2.8 %) and different run lengths. With a single seed, or a
    non-finite std, the noise term is 0 and only the 3 % tolerance applies.

    Returns None when there is no finite reference or no finite mean.
    """
    ref_block = cell.get("reference")
    ref = _num(ref_block.get("rmse_a")) if isinstance(ref_block, Mapping) else None
    mean = metric(cell, "rmse_a", "mean")
    if ref is None or mean is None or not math.isfinite(ref) or not math.isfinite(mean):
        return None
    std = metric(cell, "rmse_a", "std")
    if std is None or not math.isfinite(std):
        std = 0.0
    n = max(len(cell.get("seeds") or ()), 1)
    threshold = DEVIATION_NOISE_FACTOR * abs(std) * math.sqrt(1.0 + 1.0 / n)
    threshold += DEVIATION_REL_TOLERANCE * abs(ref)
    return Deviation(delta=mean - ref, threshold=threshold)


def _rank_key(cell: Mapping[str, Any]) -> tuple[bool, bool, float, str]:
    mean = metric(cell, "rmse_a", "mean")
    finite = mean is not None and math.isfinite(mean)
    return (
        bool(cell.get("diverged", False)),
        not finite,
        mean if finite else math.inf,
        str(cell["method"]),
    )


def benchmark_tables(results: Mapping[str, Any]) -> dict[str, list[LeaderboardRow]]:
    """Benchmark name → its rows, ranked (see the module docstring). Benchmarks sorted by name."""
    _check_schema(results)
    by_bench: dict[str, list[Mapping[str, Any]]] = {}
    for key, cell in results["cells"].items():
        bench = str(cell.get("benchmark") or key.split("/", 1)[0])
        by_bench.setdefault(bench, []).append(cell)
    tables: dict[str, list[LeaderboardRow]] = {}
    for bench in sorted(by_bench):
        cells = sorted(by_bench[bench], key=_rank_key)
        sources = _sources_of(cells)
        tables[bench] = [
            LeaderboardRow(
                rank=i + 1,
                cell=c,
                deviation=reference_deviation(c),
                source=sources.index(_citation(c)) + 1 if _citation(c) in sources else None,
            )
            for i, c in enumerate(cells)
        ]
    return tables


def _citation(cell: Mapping[str, Any]) -> str | None:
    """The citation of a cell's reference, if it has a published value or label to cite."""
    ref = cell.get("reference")
    if not isinstance(ref, Mapping) or not ref.get("citation"):
        return None
    if _num(ref.get("rmse_a")) is None and not ref.get("label"):
        return None
    return str(ref["citation"])


def _sources_of(cells: Sequence[Mapping[str, Any]]) -> list[str]:
    out: list[str] = []
    for c in cells:
        cit = _citation(c)
        if cit is not None and cit not in out:
            out.append(cit)
    return out


def benchmark_sources(rows: Sequence[LeaderboardRow]) -> list[str]:
    """The distinct citations of a benchmark's table, in footnote order (``[1]`` first)."""
    return _sources_of([r.cell for r in rows])


# ---------------------------------------------------------------------------------------------
# Cell texts (shared by Markdown, HTML and terminal)
# ---------------------------------------------------------------------------------------------


def format_number(x: Any, *, signed: bool = False) -> str:
    """4 significant digits; ``—`` when missing; ``nan``/``inf`` when not finite."""
    if isinstance(x, bool):
        return str(x).lower()
    v = _num(x)
    if v is None:
        return MISSING
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return format(v, "+.4g" if signed else ".4g")


def _config_value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format(v, "g")
    if isinstance(v, str):
        return v
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def config_summary(config: Mapping[str, Any] | None) -> str:
    """``key=value`` pairs sorted by key, comma separated (floats in ``%g`` form), less ``family``
    (shown in its own column)."""
    keys = sorted(k for k in (config or {}) if k != "family")
    if not keys:
        return MISSING
    return ", ".join(f"{k}={_config_value(config[k])}" for k in keys)


def _reference(cell: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = cell.get("reference")
    return ref if isinstance(ref, Mapping) else {}


def _flags(row: LeaderboardRow) -> list[str]:
    flags = []
    if row.diverged:
        seeds = row.cell.get("diverged_seeds") or []
        flags.append("DIVERGED" + (f" (seeds {', '.join(str(s) for s in seeds)})" if seeds else ""))
    if row.deviation is not None and row.deviation.significant:
        flags.append(f"≠ ref ({row.deviation.direction})")
    return flags


def _rmse_a_text(cell: Mapping[str, Any]) -> str:
    mean = format_number(metric(cell, "rmse_a", "mean"))
    std = metric(cell, "rmse_a", "std")
    return mean if std is None else f"{mean} ± {format_number(std)}"


@dataclass(frozen=True)
class Column:
    """A table column: header, short key (HTML class / tests) and the cell text of a row."""

    key: str
    header: str
    text: Callable[[LeaderboardRow], str]
    numeric: bool = True


COLUMNS: tuple[Column, ...] = (
    Column("rank", "#", lambda r: str(r.rank)),
    Column("method", "method", lambda r: r.method, numeric=False),
    Column("family", "family", lambda r: str(r.cell.get("family") or MISSING), numeric=False),
    Column("config", "config", lambda r: config_summary(r.cell.get("config")), numeric=False),
    Column("rmse_a", "rmse.a", lambda r: _rmse_a_text(r.cell)),
    Column("ref_rmse_a", "ref. rmse.a", lambda r: format_number(_reference(r.cell).get("rmse_a"))),
    Column(
        "delta_ref",
        "Δ ref",
        lambda r: MISSING if r.deviation is None else format_number(r.deviation.delta, signed=True),
    ),
    Column(
        "ref_label",
        "reference",
        lambda r: str(_reference(r.cell).get("label") or MISSING),
        numeric=False,
    ),
    Column(
        "ref_citation",
        "source",
        lambda r: MISSING if r.source is None else f"[{r.source}]",
        numeric=False,
    ),
    Column("rmse_f", "rmse.f", lambda r: format_number(metric(r.cell, "rmse_f"))),
    Column("rmse_s", "rmse.s", lambda r: format_number(metric(r.cell, "rmse_s"))),
    Column("spread_a", "spread.a", lambda r: format_number(metric(r.cell, "spread_a"))),
    Column("crps", "CRPS", lambda r: format_number(metric(r.cell, "crps"))),
    Column("rank_chi2", "rank χ²", lambda r: format_number(metric(r.cell, "rank_chi2"))),
    Column("log_likelihood", "log-lik", lambda r: format_number(metric(r.cell, "log_likelihood"))),
    Column(
        "seconds_per_cycle",
        "s/cycle",
        lambda r: format_number(_num(r.cell.get("seconds_per_cycle"))),
    ),
    Column(
        "compile_seconds", "compile s", lambda r: format_number(_num(r.cell.get("compile_seconds")))
    ),
    Column("n_seeds", "seeds", lambda r: str(len(r.cell.get("seeds") or ()))),
    Column("flags", "flags", lambda r: "; ".join(_flags(r)), numeric=False),
)


def row_texts(row: LeaderboardRow) -> list[str]:
    """The texts of a row, one per column of :data:`COLUMNS`."""
    return [c.text(row) for c in COLUMNS]


def benchmark_caption(rows: Sequence[LeaderboardRow]) -> str:
    """A one-line description of a benchmark's runs (cycles, burn-in, seeds)."""
    if not rows:
        return ""
    cycles = sorted({r.cell.get("n_cycles") for r in rows if r.cell.get("n_cycles") is not None})
    burn = sorted(
        {r.cell.get("burn_in_cycles") for r in rows if r.cell.get("burn_in_cycles") is not None}
    )
    seeds = sorted({s for r in rows for s in (r.cell.get("seeds") or ())})
    parts = []
    if cycles:
        parts.append("cycles " + "/".join(str(c) for c in cycles))
    if burn:
        parts.append("burn-in " + "/".join(str(b) for b in burn) + " cycles")
    if seeds:
        parts.append("seeds " + ", ".join(str(s) for s in seeds))
    return f"{len(rows)} method(s); " + "; ".join(parts) if parts else f"{len(rows)} method(s)"


def run_info(results: Mapping[str, Any]) -> dict[str, list[str]]:
    """Distinct devices, git revisions, timestamps range and package versions over all cells."""
    cells = list(results["cells"].values())
    devices = sorted({str(c["device"]) for c in cells if c.get("device")})
    revs = sorted({str(c["git_revision"]) for c in cells if c.get("git_revision")})
    stamps = sorted(str(c["timestamp"]) for c in cells if c.get("timestamp"))
    versions: dict[str, set[str]] = {}
    for c in cells:
        for dist, ver in (c.get("versions") or {}).items():
            versions.setdefault(str(dist), set()).add(str(ver))
    return {
        "devices": devices,
        "git revisions": revs or ["unknown"],
        "timestamps": [stamps[0], stamps[-1]] if len(stamps) > 1 else stamps,
        "versions": [f"{d} {'/'.join(sorted(v))}" for d, v in sorted(versions.items())],
    }


def slug(name: str) -> str:
    """A lower-case identifier made of ``[a-z0-9-]`` (for ids and file names)."""
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return s or "x"


def benchmark_slugs(names: Sequence[str]) -> dict[str, str]:
    """Unique slugs for benchmark names (a counter is appended on collision)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        base = slug(name)
        s, i = base, 2
        while s in used:
            s, i = f"{base}-{i}", i + 1
        used.add(s)
        out[name] = s
    return out


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_markdown(
    results: Mapping[str, Any], *, plots: Mapping[str, Sequence[tuple[str, str]]] | None = None
) -> str:
    """The leaderboard as GitHub-flavoured Markdown: one table per benchmark.

    ``plots`` optionally maps a benchmark to ``(alt text, relative path)`` pairs linked below its
    table (``render_all`` passes the PNG files it wrote).
    """
    tables = benchmark_tables(results)
    lines = ["# filterax leaderboard", "", RANKING_RULE, ""]
    lines += [f"- {DIVERGENCE_RULE}", f"- {DEVIATION_RULE}", ""]
    for bench, rows in tables.items():
        lines += [f"## {_md_escape(bench)}", "", _md_escape(benchmark_caption(rows)), ""]
        lines.append("| " + " | ".join(_md_escape(c.header) for c in COLUMNS) + " |")
        lines.append("|" + "|".join("---:" if c.numeric else ":---" for c in COLUMNS) + "|")
        for row in rows:
            lines.append("| " + " | ".join(_md_escape(t) for t in row_texts(row)) + " |")
        lines.append("")
        sources = benchmark_sources(rows)
        if sources:
            lines += ["Sources:", ""]
            lines += [f"- [{i}] {_md_escape(cit)}" for i, cit in enumerate(sources, 1)]
            lines.append("")
        for alt, rel in (plots or {}).get(bench, ()):
            lines += [f"![{_md_escape(alt)}]({rel})", ""]
    info = run_info(results)
    lines += ["## Runs", ""]
    for k, vals in info.items():
        lines.append(f"- {k}: {_md_escape(', '.join(vals)) if vals else MISSING}")
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Terminal (rich)
# ---------------------------------------------------------------------------------------------


def _terminal_rmse(cell: Mapping[str, Any]) -> str:
    mean = format_number(metric(cell, "rmse_a", "mean"))
    std = metric(cell, "rmse_a", "std")
    if std is None:
        return mean
    return f"{mean} ± {format(std, '.2g') if math.isfinite(std) else format_number(std)}"


def _terminal_ms(cell: Mapping[str, Any]) -> str:
    sec = _num(cell.get("seconds_per_cycle"))
    if sec is None or not math.isfinite(sec):
        return format_number(sec)
    return format(1e3 * sec, ".3g")


# The terminal is a compact view (the Markdown/HTML hold every column at 4 significant digits):
# rmse.a std with 2 significant digits, Δ with 3, time per cycle in milliseconds with 3.
_TERMINAL_COLUMNS: tuple[Column, ...] = (
    Column("rank", "#", lambda r: str(r.rank)),
    Column("method", "method", lambda r: r.method, numeric=False),
    Column("rmse_a", "rmse.a", lambda r: _terminal_rmse(r.cell)),
    Column("ref_rmse_a", "ref.", lambda r: format_number(_reference(r.cell).get("rmse_a"))),
    Column(
        "delta_ref",
        "Δ ref",
        lambda r: MISSING if r.deviation is None else format(r.deviation.delta, "+.3g"),
    ),
    Column("spread_a", "spread.a", lambda r: format_number(metric(r.cell, "spread_a"))),
    Column("rmse_s", "rmse.s", lambda r: format_number(metric(r.cell, "rmse_s"))),
    Column("ms_per_cycle", "ms/cycle", lambda r: _terminal_ms(r.cell)),
    Column("flags", "flags", lambda r: "; ".join(_flags(r)), numeric=False),
)


def terminal_tables(results: Mapping[str, Any]) -> list[Table]:
    """One rich Table per benchmark: a compact subset of the columns (configs, rmse.f, CRPS, χ²,
    log-lik and compile times are in the Markdown/HTML); published labels and sources in the
    caption."""
    cols = _TERMINAL_COLUMNS
    out = []
    for bench, rows in benchmark_tables(results).items():
        notes = []
        for row in rows:
            ref = _reference(row.cell)
            if row.source is not None:
                label = ref.get("label") or MISSING
                notes.append(f"{row.method}: ref. {label} [{row.source}]")
        notes += [f"[{i}] {cit}" for i, cit in enumerate(benchmark_sources(rows), 1)]
        table = Table(
            title=f"{bench} — {benchmark_caption(rows)}",
            caption="\n".join(notes) or None,
            caption_justify="left",
            header_style="bold",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )
        for c in cols:
            table.add_column(
                c.header,
                justify="right" if c.numeric else "left",
                overflow="fold",
                no_wrap=c.key in ("rmse_a", "rank", "delta_ref"),
            )
        for row in rows:
            style = "red" if row.diverged else None
            if style is None and row.deviation is not None and row.deviation.significant:
                style = "yellow"
            table.add_row(*(Text(c.text(row)) for c in cols), style=style)
        out.append(table)
    return out


def print_leaderboard(results: Mapping[str, Any], console: Console | None = None) -> None:
    """Print the leaderboard's rich tables (with colour when the console supports it)."""
    console = console or Console()
    for table in terminal_tables(results):
        console.print(table)
    console.print(Text(TERMINAL_LEGEND, style="dim"))


def render_terminal(results: Mapping[str, Any], *, width: int = 160) -> str:
    """The terminal leaderboard as plain text (rich tables rendered ``width`` columns wide)."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False)
    print_leaderboard(results, console)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------------------------


def render_all(results: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``leaderboard.md``, ``leaderboard.html`` and ``plots/*.png`` under ``out_dir``.

    Returns ``{"markdown": path, "html": path, "plots/<file>.png": path, ...}``.
    """
    from ._html import render_html
    from ._plots import make_plots

    _check_schema(results)
    out = Path(out_dir)
    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    plots = make_plots(results)
    paths: dict[str, Path] = {}
    links: dict[str, list[tuple[str, str]]] = {}
    for plot in plots:
        p = plot_dir / plot.filename
        write_bytes_atomic(p, plot.png)
        paths[f"plots/{plot.filename}"] = p
        links.setdefault(plot.benchmark, []).append((plot.alt, f"plots/{plot.filename}"))
    md = out / "leaderboard.md"
    write_text_atomic(md, render_markdown(results, plots=links))
    html = out / "leaderboard.html"
    write_text_atomic(html, render_html(results, plots=plots))
    return {"markdown": md, "html": html, **paths}
