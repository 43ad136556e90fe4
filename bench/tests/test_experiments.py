"""Reproduction experiments: registry, target evaluation, the JSON merge, the CLI, the HTML
section, and one tiny real run of the VI gain code against scipy's DARE."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

import filterax.bench as fb
from filterax.bench import _experiments
from filterax.bench._cli import main
from filterax.bench._experiment_plots import make_experiment_plots
from filterax.bench._html import render_html

BUILTIN = (
    "vi_linear_gain_full",
    "vi_linear_gain_partial",
    "vi_linear_gain_online",
    "vi_l96_exkf_gain",
    "vi_enkf_surface_l96",
    "vi_enkf_surface_ks",
    "vi_enkf_gd",
    "learn_A_forcing",
    "learn_A_mlp_correction",
    "learn_B_obs_operator",
    "learn_C_letkf",
)


@pytest.fixture
def experiments_snapshot():
    fb.experiments()  # the built-ins are registered on first use of the API
    saved = dict(_experiments._EXPERIMENTS)
    yield
    _experiments._EXPERIMENTS.clear()
    _experiments._EXPERIMENTS.update(saved)


def _fake(name="fake_a", value=1.0, calls=None):
    def run(quick, progress):
        if calls is not None:
            calls.append((name, quick))
        if progress is not None:
            progress("stage", 1, 1)
        return {"x": value, "nested": {"y": 2.0, "bad": math.nan}, "arr": np.arange(3.0)}

    return fb.Experiment(
        name=name,
        title=f"fake {name}",
        citation="nobody 2026",
        run=run,
        targets=(("x", "<=", 1.5, "src"), ("nested.y", "in", (1.0, 3.0), "src")),
        sizes={"quick": "tiny", "full": "small"},
        summary=("nested.y", "nested.bad"),
    )


def test_builtins_registered():
    names = list(fb.experiments())
    for name in BUILTIN:
        assert name in names
        exp = fb.get_experiment(name)
        assert exp.targets, name  # every built-in states targets
        assert set(exp.sizes) == {"quick", "full"}


def test_register_rules(experiments_snapshot):
    fb.register_experiment(_fake("fake_reg"))
    with pytest.raises(ValueError, match="replace=True"):
        fb.register_experiment(_fake("fake_reg"))
    fb.register_experiment(_fake("fake_reg", value=3.0), replace=True)
    with pytest.raises(KeyError, match="unknown experiment 'nope'"):
        fb.get_experiment("nope")
    with pytest.raises(ValueError, match="comparison"):
        fb.Experiment("bad_cmp", "t", "c", lambda q, p: {}, targets=(("x", "==", 1.0, "s"),))
    with pytest.raises(ValueError, match="low <= high"):
        fb.Experiment("bad_in", "t", "c", lambda q, p: {}, targets=(("x", "in", (2, 1), "s"),))
    with pytest.raises(ValueError, match="letters, digits"):
        fb.Experiment("bad name", "t", "c", lambda q, p: {})
    with pytest.raises(TypeError):  # the runtime type checker or our own check
        fb.register_experiment("vi_linear_gain_full")


def test_evaluate_targets():
    result = {"a": 0.5, "b": {"c": 2.0}, "n": math.nan, "lst": [1.0, 4.0]}
    rows = fb.evaluate_targets(
        [
            ("a", "<=", 0.5, "s"),  # boundary included
            ("a", "<", 0.5, "s"),  # boundary excluded
            ("b.c", ">", "a", "s"),  # against another measured key: 2 > 0.5
            ("b.c", "in", (2.0, 2.5), "s"),
            ("b.c", "in", (2.1, 2.5), "s"),
            ("lst.1", ">=", 4.0, "s"),
            ("n", "<=", 1.0, "s"),  # not finite: fails
            ("missing.key", ">=", 0.0, "s"),  # absent: fails
            ("a", "<", "missing", "s"),  # absent reference: fails
        ],
        result,
    )
    expected = [True, False, True, True, False, True, False, False, False]
    assert [r["passed"] for r in rows] == expected
    assert rows[2]["reference"] == 0.5 and rows[3]["reference"] == [2.0, 2.5]
    assert rows[6]["measured"] is None and rows[7]["measured"] is None


def test_json_merge_one_at_a_time(tmp_path, experiments_snapshot):
    calls = []
    fb.register_experiment(_fake("fake_a", 1.0, calls))
    fb.register_experiment(_fake("fake_b", 2.0, calls))
    fb.run_experiments(["fake_a"], quick=True, out=tmp_path)
    fb.run_experiments(["fake_b"], quick=False, out=tmp_path)
    data = json.loads((tmp_path / "experiments.json").read_text())
    assert data["schema"] == 1 and list(data["experiments"]) == ["fake_a", "fake_b"]
    a, b = data["experiments"]["fake_a"], data["experiments"]["fake_b"]
    assert a["quick"] is True and a["size"] == "tiny" and b["size"] == "small"
    assert a["result"]["nested"]["bad"] is None  # NaN is stored as null
    assert a["result"]["arr"] == [0.0, 1.0, 2.0]
    assert a["passed"] is True and b["passed"] is False  # 2.0 > 1.5
    assert a["summary"] == {"nested.y": 2.0, "nested.bad": None}
    assert [t["passed"] for t in b["targets"]] == [False, True]
    # rerunning one replaces it and keeps the other
    fb.register_experiment(_fake("fake_a", 0.25, calls), replace=True)
    fb.run_experiments(["fake_a"], quick=True, out=tmp_path)
    data = fb.load_experiments(tmp_path)
    assert data["fake_a"]["result"]["x"] == 0.25 and data["fake_b"]["result"]["x"] == 2.0
    assert calls == [("fake_a", True), ("fake_b", False), ("fake_a", True)]
    with pytest.raises(KeyError, match="unknown experiment"):
        fb.run_experiments(["fake_a", "nope"], out=tmp_path)
    assert len(calls) == 3  # nothing ran


def test_corrupt_file_refused(tmp_path):
    (tmp_path / "experiments.json").write_text('{"schema": 1, "experiments": {"x": 3}}')
    with pytest.raises(ValueError, match="not an experiment record"):
        fb.load_experiments(tmp_path)
    (tmp_path / "experiments.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="experiments"):
        fb.load_experiments(tmp_path)


def _records():
    """Records shaped as the built-ins write them (tiny, made up)."""
    curve = [
        {"iteration": i, "gain_error_rel": 0.4 / (1 + i), "kl": 5.0 / (1 + i), "mse": 0.6}
        for i in (0, 5, 10)
    ]
    radii, infl = [1.0, 5.0, 9.0], [1.05, 1.3]
    cost = [[10.0, 12.0, 15.0], [11.0, None, 9.5]]
    case = {
        "case": "L96_N5",
        "radii": radii,
        "inflations": infl,
        "cost": cost,
        "rmse_a": [[0.3, 0.35, 0.4], [0.32, 0.5, 0.36]],
        "vi_opt": {"radius": 9.0, "inflation": 1.3, "cost": 9.5, "rmse_a": 0.36},
        "rmse_opt": {"radius": 1.0, "inflation": 1.05, "cost": 10.0, "rmse_a": 0.3},
        "gd": {"path": [[1.25, 2.0], [1.3, 8.0]], "cost": 9.6, "cost_gap_rel": 0.02},
    }
    gain = (np.eye(6) * 0.3 + np.roll(np.eye(6), 1, axis=1) * 0.02).tolist()
    rec = {
        "exp_gain": {"plot": ["gain-training"], "result": {"curve": curve, "kf_mse": 0.52}},
        "exp_online": {
            "plot": ["gain-online"],
            "result": {
                "analytic": {"curve": [0.5, 0.1, 0.04], "curve_times": [1, 2, 3]},
                "plugin": {"curve": [0.5, 0.2, 0.14], "curve_times": [1, 2, 3]},
            },
        },
        "exp_heat": {
            "plot": ["gain-heatmap"],
            "result": {"gain": gain, "gain_band_means": {"-1": 0.0, "0": 0.3, "1": 0.02}},
        },
        "exp_surface": {"plot": ["cost-surface"], "result": {"L96_N5": case}},
    }
    for name, r in rec.items():
        r.update(
            title=f"title {name}",
            citation="c",
            quick=name == "exp_gain",
            targets=[
                {
                    "key": "k<1>",
                    "comparison": "<=",
                    "value": 1.0,
                    "source": "s&t",
                    "measured": 0.5,
                    "reference": 1.0,
                    "passed": name != "exp_heat",
                }
            ],
            passed=name != "exp_heat",
            summary={"info.x": 0.125},
        )
    return rec


def test_experiment_plots_and_html():
    records = _records()
    plots = make_experiment_plots(records)
    kinds = {(p.benchmark, p.kind) for p in plots}
    assert kinds == {
        ("exp_gain", "gain-training"),
        ("exp_online", "gain-online"),
        ("exp_heat", "gain-heatmap"),
        ("exp_surface", "cost-surface"),
    }
    assert all(p.png.startswith(b"\x89PNG") and p.width > 300 for p in plots)
    assert len({p.filename for p in plots}) == len(plots)
    # deterministic bytes
    again = make_experiment_plots({"exp_surface": records["exp_surface"]})
    assert [p.png for p in again] == [p.png for p in plots if p.benchmark == "exp_surface"]
    page = render_html({"schema": 1, "cells": {}}, plots=[], experiments=records)
    assert '<section id="experiments">' in page and 'href="#experiments"' in page
    for name in records:
        assert f'id="experiment-{name}"' in page
    assert page.count('<tr class="pass" data-target="k&lt;1&gt;">') == 3
    assert page.count('<tr class="fail" data-target="k&lt;1&gt;">') == 1
    assert page.count("✔") == 3 and page.count("✗") == 1
    assert "s&amp;t" in page and "quick size" in page and "full size" in page
    assert page.count('<tr class="info" data-summary="info.x">') == 4
    assert len(re.findall(r'<img data-plot="cost-surface"', page)) == 1
    # without experiments: no section
    page = render_html({"schema": 1, "cells": {}}, plots=[])
    assert 'id="experiments"' not in page and "#experiments" not in page


def test_report_renders_experiments_alone(tmp_path, capsys):
    (tmp_path / "experiments.json").write_text(json.dumps({"schema": 1, "experiments": _records()}))
    assert main(["report", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "leaderboard.html").read_text()
    assert '<section id="experiments">' in page
    assert (tmp_path / "plots" / "experiment-exp_gain--gain-training.png").is_file()
    # an empty folder is still an error
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", "--out", str(empty)]) == 2


def test_cli_experiments_run_and_list(tmp_path, experiments_snapshot, capsys):
    fb.register_experiment(_fake("fake_cli", 1.0))
    assert main(["experiments", "run", "fake_cli", "--out", str(tmp_path), "--quick"]) == 0
    out = capsys.readouterr().out
    assert "fake_cli: stage 1/1" in out and "✔ x = 1" in out and "nested.y = 2" in out
    rec = fb.load_experiments(tmp_path)["fake_cli"]
    assert rec["passed"] and rec["quick"]
    assert '<section id="experiments">' in (tmp_path / "leaderboard.html").read_text()
    assert main(["experiments", "run", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    assert main(["experiments", "list"]) == 0
    assert "vi_enkf_gd" in capsys.readouterr().out


def test_circulant_deviation_against_numpy():
    from filterax.bench._vi_gain import circulant_deviation

    rng = np.random.default_rng(0)
    bands = rng.normal(size=8)
    circ = np.array([[bands[(j - i) % 8] for j in range(8)] for i in range(8)])
    assert circulant_deviation(circ) < 1e-14  # exactly circulant up to rounding
    M = rng.normal(size=(8, 8))
    # numpy re-derivation: project onto circulants by averaging each periodic diagonal
    proj = np.array(
        [[np.mean([M[k, (k + (j - i)) % 8] for k in range(8)]) for j in range(8)] for i in range(8)]
    )
    expected = np.linalg.norm(M - proj) / np.linalg.norm(M)
    assert abs(circulant_deviation(M) - expected) < 1e-12


def test_training_curve_against_numpy():
    """`_curve` samples iteration 0 (K0) and every `every`-th gain, with the final one."""
    from filterax.bench._vi_gain import _curve

    rng = np.random.default_rng(1)
    K_ref = rng.normal(size=(4, 4))
    K0 = np.eye(4)
    gains = rng.normal(size=(7, 4, 4))
    seen = []

    def evaluate(K):
        seen.append(np.asarray(K))
        return float(np.sum(K)), 1.0

    rows = _curve(gains, K0, K_ref, evaluate, 3)
    assert [r["iteration"] for r in rows] == [0, 3, 6, 7]
    expected = [K0, gains[2], gains[5], gains[6]]  # gains[i - 1] is the gain after step i
    for r, K, S in zip(rows, expected, seen, strict=True):
        np.testing.assert_array_equal(S, K)
        rel = np.linalg.norm(K - K_ref) / np.linalg.norm(K_ref)
        assert abs(r["gain_error_rel"] - rel) < 1e-12
        assert r["kl"] == pytest.approx(np.sum(K), abs=1e-12)


def test_surface_case_optima_and_basin(monkeypatch):
    """Optima, best inflation per radius and the descent's basin numbers of `surface_case`,
    on a made-up surface (the vmapped cost and the descent replaced by fakes)."""
    from filterax.bench import _vi_enkf

    infl = np.array([1.0, 1.2, 1.4])
    radii = np.array([1.0, 5.0])
    cost = np.array([[5.0, 9.0], [3.0, np.nan], [4.0, 1.0]])
    T, n = 4, 2
    offsets = np.array([[0.3, 0.2], [0.1, 0.5], [0.4, 0.6]])  # rmse.a = offset exactly
    truth = np.zeros((T, n))
    means = offsets[:, :, None, None] * np.ones((3, 2, T, n))

    class Surf:
        value, status, analysis_mean = cost, np.zeros((3, 2), int), means

    monkeypatch.setattr(_vi_enkf, "vi_cost_surface", lambda *a, **k: Surf())
    landed = {"cost": 1.2, "rmse_a": 0.15}
    monkeypatch.setattr(_vi_enkf, "descend", lambda *a, **k: dict(landed))
    case = _vi_enkf.surface_case(
        "X", None, None, None, None, truth, infl, radii, None, ((1.4, 1.0), 3)
    )
    assert case["vi_opt"] == {"inflation": 1.4, "radius": 5.0, "cost": 1.0, "rmse_a": 0.6}
    assert case["rmse_opt"]["inflation"] == 1.2 and case["rmse_opt"]["radius"] == 1.0
    assert case["rmse_opt"]["rmse_a"] == pytest.approx(0.1)
    assert case["vi_opt_rmse_excess_rel"] == pytest.approx(0.6 / 0.1 - 1.0)
    assert case["best_inflation_per_radius"] == {"1.0": 1.2, "5.0": 1.4}  # NaN skipped
    finite = cost[np.isfinite(cost)]
    spread = np.median(finite) - finite.min()  # median 4, min 1
    assert case["gd"]["cost_gap_rel"] == pytest.approx((1.2 - 1.0) / spread)
    assert case["gd"]["rmse_excess_rel"] == pytest.approx(0.15 / 0.1 - 1.0)
    assert "gd_starts" not in case  # one start: no list

    # Several starts: the first is the target's `gd`, all are listed and counted.
    lands = iter([{"cost": 1.2, "rmse_a": 0.15}, {"cost": 3.9, "rmse_a": 0.4}])
    monkeypatch.setattr(_vi_enkf, "descend", lambda *a, **k: dict(next(lands)))
    case = _vi_enkf.surface_case(
        "X", None, None, None, None, truth, infl, radii, None, (((1.4, 1.0), (1.0, 5.0)), 3)
    )
    assert [g["cost"] for g in case["gd_starts"]] == [1.2, 3.9]
    assert case["gd"]["cost"] == 1.2
    # gaps 0.2 / 3 and 2.9 / 3 of (median - min): neither within 5 %
    assert case["gd_landed"] == 0
    assert case["gd_starts"][1]["cost_gap_rel"] == pytest.approx((3.9 - 1.0) / spread)
