"""Leaderboard rendering: JSON → Markdown / HTML / terminal, parsed back, checked number by number.

Contract checked here (stated in ``filterax.bench._leaderboard``), with independent
re-implementations of each rule:

- rmse.a is ``mean ± s.e.`` (s.e. = sample std / √n over the seeds with a finite value) rounded
  to the s.e.: 1 significant digit of s.e., 2 when it starts with a 1, the mean to the same
  decimal place; other scores to their own s.e. without the ``±``; 3 significant digits (and
  no ``±``) without a noise estimate; missing values ``—``, NaN ``nan``;
- the verdict (divergence per seed; reference deviation with n ≥ 2 seeds; ``1 seed``);
- rank δ = χ²/(B − 1);
- full-precision per-seed values in the details (HTML detail rows and hover, Markdown details).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import math
import re
import statistics
import struct
import sys
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from rich.console import Console

from filterax.bench._leaderboard import (
    Score,
    divergence,
    format_mean_se,
    load_results,
    noise_decimals,
    print_leaderboard,
    rank_histogram_delta,
    rank_histogram_rho,
    reference_deviation,
    render_markdown,
    render_terminal,
)
from filterax.bench._plots import log_ticks, make_plots


def _load_synthetic():
    # --import-mode=importlib keeps tests/ off sys.path; load the helper under a unique name.
    name = "filterax_bench_tests_leaderboard_synthetic"
    if name not in sys.modules:
        path = Path(__file__).with_name("leaderboard_synthetic.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


SYN = _load_synthetic()
PLOT_NAMES = {
    "rmse-vs-time": "rmse.a vs time",
    "rank-histograms": "rank histograms",
    "rmse-vs-ensemble-size": "rmse.a vs ensemble size",
    "speed-vs-accuracy": "speed vs accuracy",
}
# header → score name, for the scores rounded to their own seed noise
SCORE_COLUMNS = {
    "rmse.f": "rmse_f",
    "rmse.s": "rmse_s",
    "spread.a": "spread_a",
    "CRPS": "crps",
    "log-lik": "log_likelihood",
}
OPTIONAL = {"ref.", "Δ ref", "rmse.f", "rmse.s", "CRPS", "rank δ", "log-lik", "compile s"}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The synthetic results written as results.json, loaded back, and rendered with render_all."""
    return SYN.render_once(tmp_path_factory)


# ---------------------------------------------------------------------------------------------
# Independent parsers and checkers
# ---------------------------------------------------------------------------------------------


def _split_md_row(line: str) -> list[str]:
    """Cells of a GFM table row, honouring backslash escapes (``\\|`` is a literal pipe)."""
    assert line.startswith("|") and line.endswith("|"), line
    cells, cur, i = [], [], 1
    body = line[:-1]
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            cur.append(body[i + 1])
            i += 2
            continue
        if ch == "|":
            cells.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
        i += 1
    cells.append("".join(cur).strip())
    return cells


def _md_unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_markdown(md: str) -> dict[str, list[dict[str, str]]]:
    """``## <benchmark>`` heading → the rows of the table under it (header text → cell text)."""
    tables: dict[str, list[dict[str, str]]] = {}
    heading, header = None, None
    for line in md.splitlines():
        if line.startswith("## "):
            heading, header = line[3:].strip(), None
            continue
        if not line.startswith("|"):
            header = None
            continue
        cells = _split_md_row(line)
        if header is None:
            header = cells
            tables[heading] = []
        elif all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
            continue
        else:
            assert len(cells) == len(header), line
            tables[heading].append(dict(zip(header, cells, strict=True)))
    return tables


class PageParser(HTMLParser):
    """Collects the leaderboard tables (by id): header cells, method rows (text and ``title`` of
    each cell), the text of each detail row; images, every URL-ish attribute, ids, sources."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, dict] = {}
        self.images: list[dict] = []
        self.tags: list[str] = []
        self.urls: list[tuple[str, str, str]] = []
        self.text_chunks: list[str] = []
        self.ids: list[str] = []
        self.sources: dict[str, list[str]] = {}  # table id → citations listed under it, in order
        self.details: dict[tuple[str, str], str] = {}  # (table id, method) → detail-row text
        self._li = None
        self._table = None
        self._table_id = None
        self._row = None
        self._cell = None
        self._section = None
        self._detail = None  # (key, depth, chunks) while inside a detail row

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if a.get("id"):
            self.ids.append(a["id"])
        for k in ("src", "href", "data", "action", "poster", "srcset"):
            if k in a:
                self.urls.append((tag, k, a[k] or ""))
        if self._detail is not None:
            if tag == "tr":
                self._detail[1] += 1
            return
        if tag == "section" and "benchmark" in (a.get("class") or "").split():
            self._section = a.get("id")
        elif tag == "table":
            assert "leaderboard" in (a.get("class") or "").split(), a
            self._table = {"attrs": a, "headers": [], "cols": [], "rows": [], "titles": []}
            self._table_id = a.get("id")
            self.tables[self._table_id] = self._table
        elif tag == "tr" and self._table is not None:
            if "detail" in (a.get("class") or "").split():
                self._detail = [(self._table_id, a.get("data-detail-for")), 0, []]
            else:
                self._row = {"attrs": a, "cells": [], "titles": []}
        elif tag in ("td", "th") and self._row is not None:
            self._cell = {"tag": tag, "attrs": a, "text": []}
        elif tag == "img":
            self.images.append({**a, "_section": self._section})
        elif tag == "li" and re.fullmatch(r"src-.+-\d+", a.get("id") or ""):
            slug, k = re.fullmatch(r"src-(.+)-(\d+)", a["id"]).groups()
            listed = self.sources.setdefault(f"bench-{slug}", [])
            assert int(k) == len(listed) + 1, "sources out of order"
            self._li = []

    def handle_endtag(self, tag):
        if self._detail is not None:
            if tag == "tr":
                if self._detail[1] == 0:
                    key, _, chunks = self._detail
                    assert key not in self.details, key
                    self.details[key] = " ".join(" ".join(chunks).split())
                    self._detail = None
                else:
                    self._detail[1] -= 1
            return
        if tag in ("td", "th") and self._cell is not None:
            text = " ".join("".join(self._cell["text"]).split())
            if self._cell["tag"] == "th":
                self._table["headers"].append(text)
                self._table["cols"].append(self._cell["attrs"].get("data-col"))
                self._table["titles"].append(self._cell["attrs"].get("title"))
            else:
                self._row["cells"].append(text)
                self._row["titles"].append(self._cell["attrs"].get("title"))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row["cells"]:
                hdr = self._table["headers"]
                assert len(self._row["cells"]) == len(hdr)
                self._table["rows"].append(
                    {
                        "attrs": self._row["attrs"],
                        "cells": dict(zip(hdr, self._row["cells"], strict=True)),
                        "titles": dict(zip(hdr, self._row["titles"], strict=True)),
                    }
                )
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "section":
            self._section = None
        elif tag == "li" and self._li is not None:
            slug = self.ids[-1].rsplit("-", 1)[0].removeprefix("src-")
            self.sources[f"bench-{slug}"].append(" ".join("".join(self._li).split()))
            self._li = None

    def handle_data(self, data):
        if self._detail is not None:
            self._detail[2].append(data)
        if self._cell is not None:
            self._cell["text"].append(data)
        if self._li is not None:
            self._li.append(data)
        self.text_chunks.append(data)


def parse_html(text: str) -> PageParser:
    p = PageParser()
    p.feed(text)
    p.close()
    return p


# --- the rules, re-implemented from their statement -------------------------------------------


def _finite(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _se(block) -> float | None:
    """Sample std / √n over the finite per-seed values; None with fewer than 2."""
    vals = [v for v in block["per_seed"] if _finite(v)]
    return statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) >= 2 else None


def _decimals(se: float) -> int:
    """1 significant digit of se (2 when that digit is a 1), after rounding; its decimal place."""
    d = Decimal(repr(se))
    sig = 2 if d.as_tuple().digits[0] == 1 else 1
    quantum = Decimal(1).scaleb(d.adjusted() - sig + 1)
    rounded = d.quantize(quantum)
    return sig - 1 - rounded.adjusted()


def _shown_decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


def assert_rounded(text: str, value, se, what: str) -> None:
    """``text`` shows ``value`` rounded to the decimal place of ``se`` (3 significant digits
    when ``se`` is None); ``—`` for None, ``nan`` for NaN."""
    if value is None:
        assert text == "—", what
        return
    if isinstance(value, float) and math.isnan(value):
        assert text == "nan", what
        return
    got = float(text)
    if se is None or se == 0:
        mantissa = re.split(r"[eE]", text)[0]
        digits = re.sub(r"\D", "", mantissa).lstrip("0")
        if "." not in mantissa:  # trailing zeros of an integer are not significant
            digits = digits.rstrip("0")
        assert len(digits) <= 3, f"{what}: {text!r} has more than 3 significant digits"
        unit = 10 ** (math.floor(math.log10(abs(value))) - 2) if value else 0
    else:
        dec = _decimals(se)
        assert _shown_decimals(text) == max(dec, 0), f"{what}: {text!r} for s.e. {se!r}"
        unit = 10.0**-dec
    assert abs(got - value) <= 0.5 * unit * (1 + 1e-9) + 1e-15, f"{what}: {text!r} vs {value!r}"


def _published(cell):
    v = cell["reference"]["rmse_a"]
    return v if _finite(v) else None


def _diverged_seeds(cell) -> list:
    """The stated divergence rule, per seed."""
    out = []
    ref = _published(cell)
    for i, seed in enumerate(cell["seeds"]):
        r = cell["rmse_a"]["per_seed"][i]
        s = cell["spread_a"]["per_seed"][i]
        if (
            not _finite(r)
            or seed in cell["diverged_seeds"]
            or (_finite(s) and s >= 0 and r > 2 * s)
            or (ref is not None and r > 2 * ref)
        ):
            out.append(seed)
    return out


def _n_finite(cell) -> int:
    return sum(_finite(v) for v in cell["rmse_a"]["per_seed"])


def _deviates(cell):
    """The documented deviation rule, recomputed from the JSON: None, 'worse' or 'better'."""
    ref = _published(cell)
    mean, n = cell["rmse_a"]["mean"], _n_finite(cell)
    if ref is None or not _finite(mean) or n < 2:
        return None
    std = statistics.stdev(v for v in cell["rmse_a"]["per_seed"] if _finite(v))
    threshold = 2 * std * math.sqrt(1 + 1 / n) + 0.03 * abs(ref)
    if abs(mean - ref) <= threshold:
        return None
    return "worse" if mean > ref else "better"


def _expected_verdict(cell) -> str:
    seeds = _diverged_seeds(cell)
    if seeds:
        return f"DIVERGED (seeds {', '.join(str(s) for s in seeds)})"
    if _n_finite(cell) < 2:
        return "1 seed" if len(cell["seeds"]) == 1 else "—"
    if _published(cell) is None:
        return "—"
    direction = _deviates(cell)
    return f"≠ ref ({direction})" if direction else "≈ ref"


def _expected_order(cells) -> list[str]:
    """The documented ranking, computed from the JSON alone."""

    def key(c):
        m = c["rmse_a"]["mean"]
        finite = _finite(m)
        return (bool(_diverged_seeds(c)), not finite, m if finite else math.inf, c["method"])

    return [c["method"] for c in sorted(cells, key=key)]


def _rank_delta(cell):
    """(mean, s.e.) of χ²/(B − 1) over seeds, B = bins of the pooled histogram; (None, None)."""
    bins = len(cell["series"]["rank_histogram"])
    chi2 = [v for v in cell["rank_chi2"]["per_seed"] if _finite(v)]
    if bins < 2 or not chi2:
        return None, None
    deltas = [v / (bins - 1) for v in chi2]
    se = statistics.stdev(deltas) / math.sqrt(len(deltas)) if len(deltas) >= 2 else None
    return statistics.fmean(deltas), se


def _config_pieces(config) -> list[str]:
    """``key=value`` sorted by key, ``family`` left out (shown on its own)."""
    out = []
    for k, v in sorted(config.items()):
        if k == "family":
            continue
        if isinstance(v, bool):
            out.append(f"{k}={'true' if v else 'false'}")
        elif isinstance(v, float):
            out.append(f"{k}={v:g}")
        else:
            out.append(f"{k}={v}")
    return out


def _cells_by_benchmark(results):
    by: dict[str, list[dict]] = {}
    for c in results["cells"].values():
        by.setdefault(c["benchmark"], []).append(c)
    return by


def _has(cells, name) -> bool:
    return any(c[name]["mean"] is not None for c in cells)


def check_table(
    bench: str, rows: list[dict[str, str]], cells: list[dict], sources: list[str], *, md: bool
) -> None:
    """Every shown value of a benchmark's table against the JSON cells (header text → text);
    ``sources`` are the citations listed under the table, footnote [1] first."""
    assert len(set(sources)) == len(sources), f"{bench}: duplicate sources"
    cited = set()
    order = _expected_order(cells)
    assert order == SYN.EXPECTED_ORDER[bench]
    assert [r["method"] for r in rows] == order, f"{bench}: not ranked by rmse.a"
    headers = list(rows[0])
    # the verdict sits right next to the score
    assert headers[:4] == ["#", "method", "rmse.a", "verdict"], headers
    if md:
        assert headers[-1] == "rmse.a per seed"
        assert not {"rmse.f", "compile s", "seeds", "config"} & set(headers)
    else:
        assert "seeds" in headers and "config" not in headers and "family" not in headers
    # an optional column is left out only when no cell of the benchmark has a value for it
    for header, name in [*SCORE_COLUMNS.items(), ("compile s", "compile_seconds")]:
        if header not in headers and not (md and header in ("rmse.f", "compile s")):
            if name == "compile_seconds":
                assert all(c[name] is None for c in cells), (bench, header)
            else:
                assert not _has(cells, name), (bench, header)
    if "ref." not in headers:
        assert all(_published(c) is None and not c["reference"]["label"] for c in cells)
    if "rank δ" not in headers:
        assert all(_rank_delta(c)[0] is None for c in cells), bench
    by_method = {c["method"]: c for c in cells}
    for i, row in enumerate(rows):
        c = by_method[row["method"]]
        what = f"{bench}/{c['method']}"
        assert row["#"] == str(i + 1)
        rm, se = c["rmse_a"], _se(c["rmse_a"])
        text = row["rmse.a"]
        if se is None:
            assert "±" not in text, f"{what}: no noise estimate, no ± ({text!r})"
            assert_rounded(text, rm["mean"], None, what + " rmse.a")
        else:
            mean_text, se_text = (s.strip() for s in text.split("±"))
            assert_rounded(mean_text, rm["mean"], se, what + " rmse.a mean")
            assert_rounded(se_text, se, se, what + " rmse.a s.e.")
        # the verdict
        assert row["verdict"] == _expected_verdict(c), what
        diverged = (bench, c["method"]) in SYN.EXPECTED_DIVERGED
        assert diverged == bool(_diverged_seeds(c)), f"{what}: the synthetic case misses the rule"
        direction = SYN.EXPECTED_DEVIATES.get((bench, c["method"]))
        if not diverged:  # a diverged cell's verdict is DIVERGED, whatever its reference
            assert _deviates(c) == direction, f"{what}: the synthetic case does not test the rule"
        if (bench, c["method"]) in SYN.EXPECTED_SINGLE_SEED:
            assert row["verdict"] == "1 seed" and "±" not in row["rmse.a"]
        # the published value with its footnote, and ours − published
        ref = c["reference"]
        if "ref." in headers:
            cites = ref["citation"] and (ref["rmse_a"] is not None or ref["label"])
            m = re.fullmatch(r"(\S+)?\s*\[(\d+)\]", row["ref."])
            if cites:
                assert m, f"{what}: ref. {row['ref.']!r}"
                assert sources[int(m.group(2)) - 1] == ref["citation"], what
                cited.add(ref["citation"])
                shown = m.group(1)
            else:
                assert not m, what
                shown = row["ref."]
            if ref["rmse_a"] is None:
                assert shown in (None, "—"), what
            else:
                assert float(shown) == ref["rmse_a"], what
            if ref["rmse_a"] is None or not _finite(rm["mean"]):
                assert row["Δ ref"] == "—", what
            else:
                assert row["Δ ref"][0] in "+-0", what
                assert_rounded(row["Δ ref"], rm["mean"] - ref["rmse_a"], se, what + " Δ ref")
        for header, name in SCORE_COLUMNS.items():
            if header in headers:
                block = c[name]
                assert_rounded(row[header], block["mean"], _se(block), f"{what} {name}")
        if "rank δ" in headers:
            mean, dse = _rank_delta(c)
            assert_rounded(row["rank δ"], mean, dse, what + " rank δ")
        sec = c["seconds_per_cycle"]
        assert_rounded(row["ms/cycle"], None if sec is None else 1e3 * sec, None, what + " ms")
        if "compile s" in headers:
            assert_rounded(row["compile s"], c["compile_seconds"], None, what + " compile s")
        if "seeds" in headers:
            assert row["seeds"] == str(len(c["seeds"]))
        if md:
            shown = row["rmse.a per seed"].split(", ")
            assert len(shown) == len(c["seeds"]), what
            for t, v in zip(shown, rm["per_seed"], strict=True):
                assert_rounded(t, v, se, what + " per seed")
    assert set(sources) == cited, f"{bench}: a listed source is cited by no row"


def check_details(bench: str, method: str, text: str, cell: dict) -> None:
    """A method's details hold its family, config, verdict reasons and every per-seed value at
    full precision (as stored in results.json)."""
    what = f"{bench}/{method} details"
    assert str(cell["family"]) in text, what
    for piece in _config_pieces(cell["config"]):
        assert piece in text, f"{what}: {piece}"
    if cell["reference"]["label"]:
        assert cell["reference"]["label"] in text, what
    for name in ("rmse_a", "spread_a", "rmse_f", "log_likelihood"):
        for v in cell[name]["per_seed"]:
            if _finite(v):
                assert repr(float(v)) in text, f"{what}: {name} {v!r}"
    if _diverged_seeds(cell):
        assert "diverged" in text and "seed" in text, what


# ---------------------------------------------------------------------------------------------
# Tests: rules on hand-made cells
# ---------------------------------------------------------------------------------------------


def test_load_results_accepts_file_or_directory_and_checks_schema(tmp_path):
    results = SYN.make_results()
    (tmp_path / "results.json").write_text(json.dumps(results), encoding="utf-8")
    by_dir = load_results(tmp_path)
    by_file = load_results(tmp_path / "results.json")
    assert by_dir.keys() == by_file.keys() == {"schema", "cells"}
    assert by_dir["cells"].keys() == results["cells"].keys()
    (tmp_path / "bad.json").write_text(json.dumps({"schema": 2, "cells": {}}), encoding="utf-8")
    with pytest.raises(ValueError, match="schema"):
        load_results(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="schema"):
        render_markdown({"cells": {}})


def test_rounding_to_the_seed_noise():
    def s(mean, se, n):
        return Score(mean=mean, std=se * math.sqrt(n), n=n)

    assert noise_decimals(0.0031) == 3 and noise_decimals(0.0014) == 4
    assert noise_decimals(0.0096) == 2  # rounds to 0.01
    assert noise_decimals(0.0196) == 3  # rounds to 0.020
    assert noise_decimals(12.0) == 0 and noise_decimals(35.0) == -1
    assert format_mean_se(s(0.2143, 0.0031, 3)) == "0.214 ± 0.003"
    assert format_mean_se(s(0.2143, 0.0014, 4)) == "0.2143 ± 0.0014"
    assert format_mean_se(s(1.23456, 0.0096, 2)) == "1.23 ± 0.01"
    assert format_mean_se(s(-1234.5, 35.0, 3)) == "-1230 ± 40"
    assert format_mean_se(s(-0.0004, 0.003, 3)) == "0.000 ± 0.003"  # no "-0.000"
    # one seed: no noise estimate, no "± 0", 3 significant digits
    assert format_mean_se(Score(mean=0.2143, std=0.0, n=1)) == "0.214"
    assert format_mean_se(Score(mean=0.2143, std=math.nan, n=3)) == "0.214"
    # two identical seeds: an exact zero noise is shown as such
    assert format_mean_se(Score(mean=0.5, std=0.0, n=2)) == "0.5 ± 0"
    assert format_mean_se(Score(mean=None, std=None, n=0)) == "—"
    assert format_mean_se(Score(mean=math.nan, std=math.nan, n=0)) == "nan"


def _dev_cell(mean, std, n, ref):
    return {
        "method": "m",
        "rmse_a": {"mean": mean, "std": std, "per_seed": []},
        "seeds": list(range(n)),
        "reference": {"rmse_a": ref, "label": None, "citation": ""},
    }


def test_reference_deviation_rule():
    # threshold = 2·std·sqrt(1 + 1/n) + 0.03·|ref|
    thr = 2 * 0.01 * math.sqrt(1 + 1 / 3) + 0.03 * 0.2
    d = reference_deviation(_dev_cell(0.2 + 0.99 * thr, 0.01, 3, 0.2))
    assert d is not None and not d.significant and d.threshold == pytest.approx(thr)
    d = reference_deviation(_dev_cell(0.2 + 1.01 * thr, 0.01, 3, 0.2))
    assert d.significant and d.direction == "worse"
    d = reference_deviation(_dev_cell(0.2 - 1.01 * thr, 0.01, 3, 0.2))
    assert d.significant and d.direction == "better"
    # one seed: no noise estimate, so never "≠ ref", however far (it used to be the 3 % rule)
    d = reference_deviation(_dev_cell(0.3, 0.0, 1, 0.2))
    assert not d.testable and not d.significant and d.delta == pytest.approx(0.1)
    assert not reference_deviation(_dev_cell(0.3, math.nan, 3, 0.2)).significant
    # a reference published to one decimal carries its rounding: DAPPER's KS OptInterp "0.5"
    # (0.45-0.55) against our 0.528 +- 0.0007 is no deviation; without the rounding it is one
    cell = _dev_cell(0.528, 0.0012, 3, 0.5)
    assert reference_deviation(cell).significant
    cell["reference"]["rounding"] = 0.05
    d = reference_deviation(cell)
    assert not d.significant and d.threshold == pytest.approx(
        2 * 0.0012 * math.sqrt(1 + 1 / 3) + 0.05
    )
    cell["rmse_a"]["mean"] = 0.56
    assert reference_deviation(cell).significant
    # nothing to compare
    assert reference_deviation(_dev_cell(0.3, 0.01, 3, None)) is None
    assert reference_deviation(_dev_cell(math.nan, math.nan, 3, 0.2)) is None


def _div_cell(rmse, spread, *, ref=None, runner=(), seeds=None):
    seeds = list(range(len(rmse))) if seeds is None else seeds
    return {
        "method": "m",
        "seeds": seeds,
        "rmse_a": {"mean": None, "std": None, "per_seed": list(rmse)},
        "spread_a": {"mean": None, "std": None, "per_seed": list(spread)},
        "diverged": bool(runner),
        "diverged_seeds": list(runner),
        "reference": {"rmse_a": ref, "label": None, "citation": ""},
    }


def test_divergence_rule():
    ok = divergence(_div_cell([0.5, 0.6], [0.5, 0.31]))
    assert not ok.diverged and ok.label() == ""
    # (b) error beyond twice the filter's own spread, seed by seed
    d = divergence(_div_cell([0.5, 0.6, 0.7], [0.5, 0.29, 0.36]))
    assert d.diverged and d.seeds == (1,) and d.label() == "DIVERGED (seeds 1)"
    assert "spread.a" in d.explanation() and d.explanation().startswith("seed 1: ")
    # a collapsed spread (0) counts; a missing or negative one does not apply the test
    assert divergence(_div_cell([0.1], [0.0])).seeds == (0,)
    assert not divergence(_div_cell([0.5, 0.5], [None, -1.0])).diverged
    # (c) twice the published value of the same setup
    assert divergence(_div_cell([0.39, 0.41], [0.4, 0.4], ref=0.2)).seeds == (1,)
    assert not divergence(_div_cell([0.39], [0.4], ref=0.2)).diverged
    # (a) the runner's flag, and a non-finite seed
    d = divergence(_div_cell([0.5, 0.5, None], [0.5, 0.5, None], runner=[1]))
    assert d.seeds == (1, 2) and "runner" in d.explanation() and "non-finite" in d.explanation()
    assert divergence(_div_cell([math.nan], [0.1])).diverged
    # seed labels are the cell's seeds, not positions
    assert divergence(_div_cell([0.5, 2.0], [0.5, 0.5], seeds=[7, 9])).label() == (
        "DIVERGED (seeds 9)"
    )
    # no per-seed values: the verdict is on the means and the runner's cell flag
    cell = {
        "method": "m",
        "seeds": [0, 1],
        "rmse_a": {"mean": 3.0, "std": 0.1},
        "spread_a": {"mean": 1.0, "std": 0.1},
        "diverged": False,
        "reference": {"rmse_a": None},
    }
    d = divergence(cell)
    assert d.diverged and d.seeds == (None,) and d.label() == "DIVERGED"
    cell["spread_a"]["mean"] = 2.0
    assert not divergence(cell).diverged
    cell["diverged"] = True
    assert divergence(cell).diverged


def test_rank_histogram_delta_flat_vs_u_shaped():
    rng = np.random.default_rng(0)
    # ranks drawn uniformly: δ ≈ 1 whatever the number of bins and of ranks counted
    for bins, m in [(4, 2_000), (11, 50_000), (41, 400_000)]:
        deltas = [
            rank_histogram_delta(rng.multinomial(m, np.ones(bins) / bins)) for _ in range(200)
        ]
        assert 0.85 < float(np.mean(deltas)) < 1.15, (bins, m, np.mean(deltas))
    assert rank_histogram_delta([100] * 11) == 0.0
    # a U-shaped histogram (under-dispersed ensemble): δ ≫ 1; doubling the counts doubles δ
    # (significance grows with M) while ρ, the size of the departure, stays put
    u = np.array([3.0, 1.5, 1.0, 0.8, 0.7, 0.7, 0.8, 1.0, 1.5, 3.0]) * 1000
    assert rank_histogram_delta(u) > 100
    assert rank_histogram_delta(2 * u) == pytest.approx(2 * rank_histogram_delta(u))
    assert rank_histogram_rho(2 * u) == pytest.approx(rank_histogram_rho(u))
    p = u / u.sum()
    assert rank_histogram_rho(u) == pytest.approx(math.sqrt(np.mean((len(u) * p - 1) ** 2)))
    assert rank_histogram_delta([5]) is None and rank_histogram_delta([0, 0]) is None


def test_log_ticks_label_enough_values():
    for lo, hi in [(0.13, 0.27), (0.17, 0.23), (0.3, 1.1), (0.1, 10), (2e-5, 8e-3), (5, 5000)]:
        ticks = log_ticks(lo, hi)
        assert len(ticks) >= 4, (lo, hi, ticks)
        assert all(lo <= t <= hi for t in ticks) and ticks == sorted(set(ticks)), ticks


# ---------------------------------------------------------------------------------------------
# Tests: the rendered files
# ---------------------------------------------------------------------------------------------


def test_render_all_writes_every_file(rendered):
    results, out, paths = rendered
    assert paths["markdown"] == out / "leaderboard.md" and paths["markdown"].is_file()
    assert paths["html"] == out / "leaderboard.html" and paths["html"].is_file()
    pngs = sorted(k for k in paths if k.startswith("plots/"))
    assert len(pngs) == sum(len(v) for v in SYN.EXPECTED_PLOTS.values())
    for k in pngs:
        assert paths[k] == out / k
        assert paths[k].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _md_section(md: str, bench: str) -> str:
    return md.split(f"## {bench}\n", 1)[1].split("\n## ", 1)[0]


def test_markdown_tables_match_the_json(rendered):
    results, out, _ = rendered
    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    tables = parse_markdown(md)
    by_bench = _cells_by_benchmark(results)
    assert set(tables) == set(by_bench)
    for bench, cells in by_bench.items():
        section = _md_section(md, bench)
        listed = re.findall(r"^- \[(\d+)\] (.*)$", section, flags=re.M)
        assert [int(k) for k, _ in listed] == list(range(1, len(listed) + 1))
        check_table(bench, tables[bench], cells, [_md_unescape(t) for _, t in listed], md=True)
        # configs, reasons and full-precision per-seed values: in a collapsed details block
        block = section.split("<details>", 1)[1].split("</details>", 1)[0]
        assert block.count("\n- **") == len(cells)
        for c in cells:
            item = _md_unescape(block.split(f"- **{_md_escape_name(c['method'])}**", 1)[1])
            check_details(bench, c["method"], item.split("\n- **", 1)[0], c)
    # the plots written next to it are linked under their benchmark, with their captions
    for bench, kinds in SYN.EXPECTED_PLOTS.items():
        section = _md_section(md, bench)
        links = re.findall(r"!\[([^\]]*)\]\((plots/[^)]+\.png)\)\n\n\*([^*]+)\*", section)
        assert len(links) == len(kinds), bench
        for alt, rel, caption in links:
            assert bench in alt and (out / rel).is_file()
            assert "mean" in caption or "averaged" in caption, caption
        assert {k for k in kinds if any(k in rel for _, rel, _ in links)} == kinds
    # the rules are stated
    for needle in ("DIVERGED", "2 × spread.a", "2 × the published", "≠ ref", "rank δ", "± "):
        assert needle in md
    # without plots, no image links
    assert "![" not in render_markdown(results)


def _md_escape_name(name: str) -> str:
    return re.sub(r"([\\|<`*])", r"\\\1", name)


def test_html_tables_match_the_json(rendered):
    results, out, _ = rendered
    page = parse_html((out / "leaderboard.html").read_text(encoding="utf-8"))
    by_bench = _cells_by_benchmark(results)
    tables = {t["attrs"]["data-benchmark"]: (tid, t) for tid, t in page.tables.items()}
    assert set(tables) == set(by_bench)
    assert len({tid for tid, _ in tables.values()}) == len(tables), "table ids must be unique"
    for bench, cells in by_bench.items():
        tid, table = tables[bench]
        assert tid and tid.startswith("bench-")
        assert None not in table["cols"]
        assert all(table["titles"]), "every header has its definition"
        rows = table["rows"]
        assert [r["attrs"]["data-method"] for r in rows] == [r["cells"]["method"] for r in rows]
        check_table(bench, [r["cells"] for r in rows], cells, page.sources.get(tid, []), md=False)
        by_method = {c["method"]: c for c in cells}
        for r in rows:
            method = r["cells"]["method"]
            c = by_method[method]
            classes = set((r["attrs"].get("class") or "").split())
            key = (bench, method)
            assert ("diverged" in classes) == (key in SYN.EXPECTED_DIVERGED)
            assert ("deviates" in classes) == (key in SYN.EXPECTED_DEVIATES)
            assert ("single-seed" in classes) == (key in SYN.EXPECTED_SINGLE_SEED)
            # hover: per-seed rmse.a at full precision; verdict reasons
            tip = r["titles"]["rmse.a"] or ""
            for v in c["rmse_a"]["per_seed"]:
                if _finite(v):
                    assert repr(float(v)) in tip, (key, tip)
            if key in SYN.EXPECTED_DIVERGED:
                assert "seed" in (r["titles"]["verdict"] or ""), key
            # the detail row
            check_details(bench, method, page.details[(tid, method)], c)
        assert set(page.details) >= {(tid, r["cells"]["method"]) for r in rows}


def _png_checks(png: bytes, what: str) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", what
    assert png[12:16] == b"IHDR", what
    w, h = struct.unpack(">II", png[16:24])
    assert w >= 300 and h >= 200, f"{what}: {w}x{h}"
    assert len(png) > 10_000, f"{what}: only {len(png)} bytes"
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert pixels.shape[:2] == (h, w)
    assert float(pixels[..., :3].std()) > 0.02, f"{what}: blank image"
    return w, h


def test_html_embeds_every_plot_as_base64_png(rendered):
    results, out, paths = rendered
    page = parse_html((out / "leaderboard.html").read_text(encoding="utf-8"))
    section_bench = {
        "section-" + tid.removeprefix("bench-"): t["attrs"]["data-benchmark"]
        for tid, t in page.tables.items()
    }
    seen: dict[str, set[str]] = {}
    for img in page.images:
        bench = section_bench[img["_section"]]
        kind = img["data-plot"]
        seen.setdefault(bench, set()).add(kind)
        assert PLOT_NAMES[kind] in img["alt"].lower() and bench in img["alt"], img["alt"]
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        png = base64.b64decode(img["src"][len(prefix) :], validate=True)
        w, h = _png_checks(png, img["alt"])
        assert (img["width"], img["height"]) == (str(w), str(h))
        # the same figure as the file render_all wrote
        assert png in {p.read_bytes() for k, p in paths.items() if k.startswith("plots/")}
    assert seen == {b: set(k) for b, k in SYN.EXPECTED_PLOTS.items() if k}
    assert len(page.images) == sum(len(k) for k in SYN.EXPECTED_PLOTS.values())


def test_html_is_self_contained(rendered):
    _, out, _ = rendered
    text = (out / "leaderboard.html").read_text(encoding="utf-8")
    page = parse_html(text)
    assert text.startswith("<!DOCTYPE html>")
    assert not {"script", "link", "iframe", "object", "embed", "video", "audio"} & set(page.tags)
    assert page.tags.count("style") == 1
    assert len(set(page.ids)) == len(page.ids), "duplicate ids"
    for tag, attr, url in page.urls:
        assert url.startswith(("data:image/png;base64,", "#")), (tag, attr, url[:60])
        if url.startswith("#"):
            assert url[1:] in page.ids, f"dangling link {url}"
    for needle in ("http://", "https://", "url(", "@import", "//fonts"):
        assert needle not in text
    # the rules are stated on the page
    for rule in ("rule-divergence", "rule-reference", "rule-rank-delta"):
        assert rule in page.ids
    body = " ".join(page.text_chunks)
    assert "2 × spread.a" in body and "2 × the published" in body and "χ²/(B − 1)" in body


def test_one_seed_never_prints_plus_minus_zero(rendered):
    results, out, _ = rendered
    texts = [
        (out / "leaderboard.md").read_text(encoding="utf-8"),
        (out / "leaderboard.html").read_text(encoding="utf-8"),
        render_terminal(results, width=200),
    ]
    for text in texts:
        assert "± 0 " not in text and "± 0|" not in text and "± 0<" not in text
    cell = results["cells"]["L96 sakov2008/ETKF-1seed"]
    assert cell["rmse_a"]["std"] == 0.0 and len(cell["seeds"]) == 1  # as the runner writes it


def _terminal_blocks(text: str) -> dict[str, str]:
    """Benchmark → its block of the terminal output (title line to the next title)."""
    out, current = {}, None
    for line in text.splitlines():
        for bench in SYN.EXPECTED_ORDER:
            if line.strip().startswith(bench + " —"):
                current = bench
                out[bench] = ""
        if current:
            out[current] += line + "\n"
    return out


def test_terminal_table_shows_every_method(rendered):
    results, _, _ = rendered
    text = render_terminal(results, width=200)
    assert "\x1b[" not in text  # plain text
    for cell in results["cells"].values():
        assert cell["benchmark"] in text
        assert cell["method"] in text
    n_div = sum(1 for c in results["cells"].values() if _diverged_seeds(c))
    assert text.count("DIVERGED (seeds") == n_div == len(SYN.EXPECTED_DIVERGED)
    assert "≠ ref (worse)" in text and "≠ ref (better)" in text and "1 seed" in text
    blocks = _terminal_blocks(text)
    for bench, order in SYN.EXPECTED_ORDER.items():
        block = blocks[bench]
        positions = [block.index(f" {m} ") for m in order]
        assert positions == sorted(positions), bench
        for m in order:
            c = next(
                c for c in results["cells"].values() if c["method"] == m and c["benchmark"] == bench
            )
            line = next(ln for ln in block.splitlines() if f" {m} " in ln)
            assert format_mean_se(
                Score(mean=c["rmse_a"]["mean"], std=c["rmse_a"]["std"], n=_n_finite(c))
            ) in line or not _finite(c["rmse_a"]["mean"])
    # print_leaderboard on a colour terminal: same content, styled
    buf = io.StringIO()
    print_leaderboard(results, Console(file=buf, width=200, force_terminal=True))
    coloured = buf.getvalue()
    assert "\x1b[" in coloured and "LETKF-far" in coloured


@pytest.mark.parametrize("width", [80, 100])
def test_terminal_fits_narrow_consoles_without_breaking_words(rendered, width):
    results, _, _ = rendered
    text = render_terminal(results, width=width)
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= width
    blocks = _terminal_blocks(text)
    for bench, order in SYN.EXPECTED_ORDER.items():
        block = blocks[bench]
        header = next(ln for ln in block.splitlines() if ln.lstrip().startswith("#"))
        assert re.search(r"\brmse\.a\b", header) and re.search(r"\bverdict\b", header), header
        for m in order:
            # each method's row holds its whole name, its score and the start of its verdict
            row = next((ln for ln in block.splitlines() if f" {m} " in ln), None)
            assert row is not None, f"{bench}/{m} wrapped at {width} columns:\n{block}"
    # a redirected console (CI logs) is 80 columns wide and gets the same fitted tables
    buf = io.StringIO()
    print_leaderboard(results, Console(file=buf, width=80, color_system=None))
    assert max(len(ln) for ln in buf.getvalue().splitlines()) <= 80


# ---------------------------------------------------------------------------------------------
# Tests: the plots
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plots(rendered):
    results, _, _ = rendered
    return make_plots(results)


def test_plots_are_deterministic(rendered, plots):
    _, out, _ = rendered
    for p in plots:
        assert (out / "plots" / p.filename).read_bytes() == p.png, p.filename


def test_plots_use_one_colour_per_method_across_a_benchmark(plots):
    by_bench: dict[str, dict[str, str]] = {}
    for p in plots:
        assert p.caption, p.filename
        colours = by_bench.setdefault(p.benchmark, {})
        for method, colour in p.colors.items():
            assert colours.setdefault(method, colour) == colour, (p.filename, method)
    for bench, colours in by_bench.items():
        assert len(set(colours.values())) == len(colours), f"{bench}: two methods share a colour"


def test_plots_draw_no_hidden_curve_and_only_meaningful_figures(plots):
    kinds = {(p.benchmark, p.kind) for p in plots}
    assert kinds == {(b, k) for b, ks in SYN.EXPECTED_PLOTS.items() for k in ks}
    time = next(p for p in plots if p.benchmark == "L96 sakov2008" and p.kind == "rmse-vs-time")
    # the smoother's filter curve equals ETKF's: one entry names both
    merged = [lb for lb in time.labels if "EnKS-ETKF" in lb]
    assert len(merged) == 1 and "ETKF =" in merged[0] and "identical" in merged[0], time.labels
    assert not any(lb.endswith(". ETKF") for lb in time.labels)
    size = next(
        p for p in plots if p.benchmark == "L96 sakov2008" and p.kind == "rmse-vs-ensemble-size"
    )
    assert any("EnKS-ETKF" in lb and "same point" in lb for lb in size.labels), size.labels
    for p in plots:
        assert "mean" in p.caption or "averaged" in p.caption, (p.filename, p.caption)


def test_render_all_removes_its_stale_plots_only(tmp_path):
    from filterax.bench._leaderboard import render_all

    full = SYN.make_results()
    small = {
        "schema": 1,
        "cells": {k: c for k, c in full["cells"].items() if c["benchmark"] == "Linear40 VI2025"},
    }
    plots = tmp_path / "plots"
    plots.mkdir()
    stale = plots / "linear40-vi2025--rmse-vs-ensemble-size.png"  # from an earlier rendering
    mine = plots / "my-notes.png"  # not the leaderboard's: kept
    stale.write_bytes(b"old")
    mine.write_bytes(b"mine")
    paths = render_all(small, tmp_path)
    assert sorted(p.name for p in plots.iterdir()) == sorted(
        ["linear40-vi2025--speed-vs-accuracy.png", "my-notes.png"]
    )
    assert mine.read_bytes() == b"mine" and not stale.exists()
    assert [k for k in paths if k.startswith("plots/")] == [
        "plots/linear40-vi2025--speed-vs-accuracy.png"
    ]
