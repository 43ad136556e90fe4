"""Leaderboard rendering: JSON → Markdown / HTML / terminal, parsed back, checked number by number.

Formatting contract checked here (stated in ``filterax.bench._leaderboard``): every score is printed
with at most 4 significant digits, so a printed number must lie within half a unit of the 4th
significant digit of the JSON value; missing values print as ``—`` and NaN as ``nan``.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import math
import re
import struct
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pytest
from rich.console import Console

from filterax.bench._leaderboard import (
    load_results,
    print_leaderboard,
    reference_deviation,
    render_markdown,
    render_terminal,
)


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
    """Collects tables (by id), their rows and header cells, images and every URL-ish attribute."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, dict] = {}
        self.images: list[dict] = []
        self.tags: list[str] = []
        self.urls: list[tuple[str, str, str]] = []
        self.text_chunks: list[str] = []
        self.ids: list[str] = []
        self.sources: dict[str, list[str]] = {}  # table id → citations listed under it, in order
        self._li = None
        self._table = None
        self._row = None
        self._cell = None
        self._section = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if a.get("id"):
            self.ids.append(a["id"])
        for k in ("src", "href", "data", "action", "poster", "srcset"):
            if k in a:
                self.urls.append((tag, k, a[k] or ""))
        if tag == "section" and "benchmark" in (a.get("class") or "").split():
            self._section = a.get("id")
        elif tag == "table":
            self._table = {"attrs": a, "headers": [], "cols": [], "rows": []}
            self.tables[a.get("id")] = self._table
        elif tag == "tr" and self._table is not None:
            self._row = {"attrs": a, "cells": []}
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
        if tag in ("td", "th") and self._cell is not None:
            text = " ".join("".join(self._cell["text"]).split())
            if self._cell["tag"] == "th":
                self._table["headers"].append(text)
                self._table["cols"].append(self._cell["attrs"].get("data-col"))
            else:
                self._row["cells"].append(text)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row["cells"]:
                hdr = self._table["headers"]
                assert len(self._row["cells"]) == len(hdr)
                self._table["rows"].append(
                    {
                        "attrs": self._row["attrs"],
                        "cells": dict(zip(hdr, self._row["cells"], strict=True)),
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


def assert_number(text: str, value, what: str) -> None:
    """``text`` shows ``value`` with at most 4 significant digits (— for None, nan for NaN)."""
    if value is None:
        assert text == "—", what
        return
    if isinstance(value, float) and math.isnan(value):
        assert text == "nan", what
        return
    got = float(text)
    mantissa = re.split(r"[eE]", text.lstrip("+-"))[0]
    digits = re.sub(r"\D", "", mantissa).lstrip("0")
    assert len(digits) <= 4, f"{what}: {text!r} has more than 4 significant digits"
    if value == 0:
        assert got == 0, what
        return
    tol = 0.5 * 10 ** (math.floor(math.log10(abs(value))) - 3)
    assert abs(got - value) <= tol * (1 + 1e-9), f"{what}: {text!r} does not show {value!r}"


def _config_pieces(config) -> list[str]:
    """``key=value`` sorted by key, ``family`` left out (it has its own column)."""
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


def _expected_order(cells) -> list[str]:
    """The documented ranking, computed from the JSON alone."""

    def key(c):
        m = c["rmse_a"]["mean"]
        finite = isinstance(m, float | int) and math.isfinite(m)
        return (c["diverged"], not finite, m if finite else math.inf, c["method"])

    return [c["method"] for c in sorted(cells, key=key)]


def _deviates(cell):
    """The documented deviation rule, recomputed from the JSON: None, 'worse' or 'better'."""
    ref = cell["reference"]["rmse_a"]
    mean, std, n = cell["rmse_a"]["mean"], cell["rmse_a"]["std"], len(cell["seeds"])
    if ref is None or mean is None or not math.isfinite(mean):
        return None
    threshold = 2 * std * math.sqrt(1 + 1 / n) + 0.03 * abs(ref)
    if abs(mean - ref) <= threshold:
        return None
    return "worse" if mean > ref else "better"


def _cells_by_benchmark(results):
    by: dict[str, list[dict]] = {}
    for c in results["cells"].values():
        by.setdefault(c["benchmark"], []).append(c)
    return by


def check_table(
    bench: str, rows: list[dict[str, str]], cells: list[dict], sources: list[str]
) -> None:
    """Every shown value of a benchmark's table against the JSON cells (header text → text);
    ``sources`` are the citations listed under the table, footnote [1] first."""
    assert len(set(sources)) == len(sources), f"{bench}: duplicate sources"
    cited = set()
    order = _expected_order(cells)
    assert order == SYN.EXPECTED_ORDER[bench]
    assert [r["method"] for r in rows] == order, f"{bench}: not ranked by rmse.a"
    by_method = {c["method"]: c for c in cells}
    for i, row in enumerate(rows):
        c = by_method[row["method"]]
        what = f"{bench}/{c['method']}"
        assert row["#"] == str(i + 1)
        assert row["family"] == c["family"]
        if _config_pieces(c["config"]):
            assert row["config"].split(", ") == _config_pieces(c["config"]), what
        else:
            assert row["config"] == "—"
        mean, std = c["rmse_a"]["mean"], c["rmse_a"]["std"]
        if std is None:  # the runner writes null for a score no seed produced
            assert_number(row["rmse.a"], mean, what + " rmse.a mean")
        else:
            mean_text, std_text = (s.strip() for s in row["rmse.a"].split("±"))
            assert_number(mean_text, mean, what + " rmse.a mean")
            assert_number(std_text, std, what + " rmse.a std")
        ref = c["reference"]
        assert_number(row["ref. rmse.a"], ref["rmse_a"], what + " reference")
        assert row["reference"] == (ref["label"] or "—")
        # the citation is a footnote [k] resolving to the k-th listed source, when there is a
        # published value or label to cite
        if ref["citation"] and (ref["rmse_a"] is not None or ref["label"]):
            m = re.fullmatch(r"\[(\d+)\]", row["source"])
            assert m, f"{what}: source {row['source']!r}"
            assert sources[int(m.group(1)) - 1] == ref["citation"], what
            cited.add(ref["citation"])
        else:
            assert row["source"] == "—", what
        if ref["rmse_a"] is None or mean is None or not math.isfinite(mean):
            assert row["Δ ref"] == "—", what
        else:
            delta = c["rmse_a"]["mean"] - ref["rmse_a"]
            assert row["Δ ref"][0] in "+-", what
            assert_number(row["Δ ref"], delta, what + " Δ ref")
        for header, name in [
            ("rmse.f", "rmse_f"),
            ("rmse.s", "rmse_s"),
            ("spread.a", "spread_a"),
            ("CRPS", "crps"),
            ("rank χ²", "rank_chi2"),
            ("log-lik", "log_likelihood"),
        ]:
            assert_number(row[header], c[name]["mean"], f"{what} {name}")
        assert_number(row["s/cycle"], c["seconds_per_cycle"], what + " s/cycle")
        assert_number(row["compile s"], c["compile_seconds"], what + " compile s")
        assert row["seeds"] == str(len(c["seeds"]))
        # marks
        flags = row["flags"]
        diverged = (bench, c["method"]) in SYN.EXPECTED_DIVERGED
        assert diverged == c["diverged"]
        assert ("DIVERGED" in flags) == diverged, what
        if diverged:
            seeds = ", ".join(str(s) for s in c["diverged_seeds"])
            assert f"DIVERGED (seeds {seeds})" in flags
        direction = SYN.EXPECTED_DEVIATES.get((bench, c["method"]))
        assert _deviates(c) == direction, f"{what}: the synthetic case does not test the rule"
        assert ("≠ ref" in flags) == (direction is not None), what
        if direction:
            assert f"≠ ref ({direction})" in flags
    assert set(sources) == cited, f"{bench}: a listed source is cited by no row"


# ---------------------------------------------------------------------------------------------
# Tests
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
    # one seed: no seed-noise estimate, only the 3 % tolerance
    assert reference_deviation(_dev_cell(0.2, 0.0, 1, 0.2)).threshold == pytest.approx(0.006)
    assert reference_deviation(_dev_cell(0.3, math.nan, 1, 0.2)).threshold == pytest.approx(0.006)
    # nothing to compare
    assert reference_deviation(_dev_cell(0.3, 0.01, 3, None)) is None
    assert reference_deviation(_dev_cell(math.nan, math.nan, 3, 0.2)) is None


def test_render_all_writes_every_file(rendered):
    results, out, paths = rendered
    assert paths["markdown"] == out / "leaderboard.md" and paths["markdown"].is_file()
    assert paths["html"] == out / "leaderboard.html" and paths["html"].is_file()
    pngs = sorted(k for k in paths if k.startswith("plots/"))
    assert len(pngs) == sum(len(v) for v in SYN.EXPECTED_PLOTS.values())
    for k in pngs:
        assert paths[k] == out / k
        assert paths[k].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_tables_match_the_json(rendered):
    results, out, _ = rendered
    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    tables = parse_markdown(md)
    by_bench = _cells_by_benchmark(results)
    assert set(tables) == set(by_bench)
    for bench, cells in by_bench.items():
        section = md.split(f"## {bench}\n", 1)[1].split("\n## ", 1)[0]
        listed = re.findall(r"^- \[(\d+)\] (.*)$", section, flags=re.M)
        assert [int(k) for k, _ in listed] == list(range(1, len(listed) + 1))
        check_table(bench, tables[bench], cells, [t.replace("\\|", "|") for _, t in listed])
    # the plots written next to it are linked under their benchmark
    for bench, kinds in SYN.EXPECTED_PLOTS.items():
        section = md.split(f"## {bench}\n", 1)[1].split("\n## ", 1)[0]
        links = re.findall(r"!\[([^\]]*)\]\((plots/[^)]+\.png)\)", section)
        assert len(links) == len(kinds), bench
        for alt, rel in links:
            assert bench in alt and (out / rel).is_file()
        assert {k for k in kinds if any(k in rel for _, rel in links)} == kinds
    # without plots, no image links
    assert "![" not in render_markdown(results)


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
        rows = table["rows"]
        assert [r["attrs"]["data-method"] for r in rows] == [r["cells"]["method"] for r in rows]
        check_table(bench, [r["cells"] for r in rows], cells, page.sources.get(tid, []))
        for r in rows:
            classes = set((r["attrs"].get("class") or "").split())
            key = (bench, r["cells"]["method"])
            assert ("diverged" in classes) == (key in SYN.EXPECTED_DIVERGED)
            assert ("deviates" in classes) == (key in SYN.EXPECTED_DEVIATES)


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


def test_terminal_table_shows_every_method(rendered):
    results, _, _ = rendered
    text = render_terminal(results, width=200)
    assert "\x1b[" not in text  # plain text
    for cell in results["cells"].values():
        assert cell["benchmark"] in text
        assert cell["method"] in text
        m = cell["rmse_a"]["mean"]
        if m is not None and math.isfinite(m):
            # the terminal is the compact view: std with 2 significant digits
            assert f"{m:.4g} ± {cell['rmse_a']['std']:.2g}" in text
    assert text.count("DIVERGED (seeds") == len(SYN.EXPECTED_DIVERGED)
    assert "≠ ref (worse)" in text and "≠ ref (better)" in text
    # ranking: within each benchmark's block the methods appear in rank order
    for bench, order in SYN.EXPECTED_ORDER.items():
        block = text.split(bench, 1)[1]
        positions = [block.index(f" {m} ") for m in order]
        assert positions == sorted(positions), bench
    # print_leaderboard on a colour terminal: same content, styled
    buf = io.StringIO()
    print_leaderboard(results, Console(file=buf, width=200, force_terminal=True))
    coloured = buf.getvalue()
    assert "\x1b[" in coloured and "LETKF-far" in coloured
