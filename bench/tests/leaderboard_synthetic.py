"""A synthetic results dict (the runner's results.json schema 1) for the leaderboard tests.

Load it from a test module with ``load_synthetic()`` defined there: pytest runs with
``--import-mode=importlib``, so tests/ is not on sys.path.

Designed cases:

- four benchmarks, one method name ("ETKF") shared by three of them; two configs carry
  ``family`` and ``settings`` keys as the runner's do (``family`` is left out of the config text);
- L63: a cell diverged on one seed whose mean (1.2) is *smaller* than a non-diverged cell's (1.25),
  so "diverged ranks last" is observable; a cell with no reference (null value and label);
- L96: a cell far above its reference (LETKF-far: 0.35 vs 0.20, worse), one far below (0.10 vs
  0.18, better), one within seed noise, a cell with no config; log-likelihoods in the thousands;
- KS: a cell diverged on every seed with null scores (what the runner writes for non-finite
  values), no series and no timing, and a cell without ``n_ensemble`` in its config; method names
  with characters needing escaping (``|``, ``<``, ``&``);
- Linear: no series and no ``n_ensemble`` (only the speed plot can be drawn); a diverged cell with
  NaN scores (JSON ``NaN`` tokens, as Python's json writes them) and a NaN series.

Cases for the leaderboard's own verdicts (recomputed from the cells, not the runner's flag):

- L63 ``EnKF-collapse``: not flagged by the runner, rmse.a ≈ 3.3 × spread.a on every seed
  (diverged by the spread rule) and the largest mean of the benchmark;
- L96 ``LETKF-lost``: not flagged, rmse.a 0.5 against a published 0.20 (diverged by the
  reference rule, 2.5 ×), while ``LETKF-far`` (1.75 ×) stays a ``≠ ref (worse)``;
- L96 ``ETKF-1seed``: one seed, 25 % above its reference: no ``±``, verdict ``1 seed``
  (the old 3 % rule called it ``≠ ref``);
- L96 ``EnKS-ETKF``: a smoother whose filter estimate is ETKF's, bit for bit (same rmse.a
  per seed and series), with its own rmse.s and no rank histogram: drawn once in rmse-vs-time,
  as a ring in rmse-vs-ensemble-size;
- KS has a single ensemble size among cells with a finite rmse.a: no rmse-vs-ensemble-size plot.
"""

from __future__ import annotations

import json
import math
import statistics

import numpy as np

CITE_L63 = "Sakov, Oliver & Bertino 2012, MWR (via DAPPER 1.8.1)"
CITE_L96 = "Sakov & Oke 2008, Tellus A (via DAPPER 1.8.1)"
CITE_KS = "Bocquet & Farchi 2019, Tellus A (via DAPPER 1.8.1)"


CLIMATOLOGY = {"L63 sakov2012": 7.6, "L96 sakov2008": 3.6, "KS bocquet2019": 1.3}


def _stat(values):
    vals = [float(v) for v in values]
    if all(math.isfinite(v) for v in vals):
        mean = statistics.fmean(vals)
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    else:
        mean = std = math.nan
    return {"mean": mean, "std": std, "per_seed": vals}


def _cell(
    rng,
    benchmark,
    method,
    family,
    config,
    rmse,
    noise,
    *,
    seeds=(0, 1, 2),
    ref=None,
    label=None,
    citation="",
    diverged_seeds=(),
    sec=1e-3,
    compile_s=2.5,
    series=True,
    n_cycles=1000,
    burn_in=80,
    missing=None,
    smoothed=False,
    spread_factor=0.9,
    spread_noise=None,
):
    n = len(seeds)

    def draw(center, scale):
        # per-seed values with mean exactly `center` and sample std exactly `scale`, so the
        # designed orderings and reference deviations do not depend on the random draw
        if missing == "nan":
            return _stat([math.nan] * n)
        if missing == "null":
            return {"mean": None, "std": None, "per_seed": [None] * n}
        z = rng.standard_normal(n)
        z = (z - z.mean()) / z.std(ddof=1) if n > 1 else np.zeros(n)
        return _stat(center + scale * z)

    # un-round the designed means (x 1.0012345) so the 4-significant-digit rounding is exercised
    rmse_a = draw(rmse * 1.0012345, noise)
    log_likelihood = draw(-1234.5678 - 900 * rmse, 12.0)
    # the VI cost of filters (smoothers have none): derived from the log-likelihood draw, so
    # the random stream (and every designed value after it) is unchanged; 4-digit values with
    # "±" are the widest cell text of the table (the browser layout test)
    vi = [None if v is None else 20.0 - v for v in log_likelihood["per_seed"]]
    vi_cost = (
        {"mean": None, "std": None, "per_seed": [None] * n}
        if smoothed or any(v is None for v in vi)
        else _stat(vi)
    )
    cell = {
        "method": method,
        "benchmark": benchmark,
        "family": family,
        "config": config,
        "seeds": list(seeds),
        "n_cycles": n_cycles,
        "burn_in_cycles": burn_in,
        "rmse_a": rmse_a,
        "rmse_f": draw(1.4 * rmse, noise),
        # smoothers score rmse.s; filters have none (null, shown as —)
        "rmse_s": (
            draw(0.7 * rmse, noise)
            if smoothed
            else {"mean": None, "std": None, "per_seed": [None] * n}
        ),
        "spread_a": draw(spread_factor * rmse, noise if spread_noise is None else spread_noise),
        "crps": draw(0.55 * rmse, 0.5 * noise),
        "rank_chi2": draw(30.0 + 500 * rmse, 5.0),
        "log_likelihood": log_likelihood,
        "vi_cost": vi_cost,
        "diverged": bool(diverged_seeds),
        "diverged_seeds": list(diverged_seeds),
        "climatology": {"mean": None, "std": None, "per_seed": [None] * n},
        "seconds_per_cycle": sec,
        "compile_seconds": compile_s,
        "device": "cpu",
        "versions": {"jax": "0.4.35", "filterax-filters": "0.1.0"},
        "git_revision": "0123456789abcdef0123456789abcdef01234567",
        "timestamp": "2025-01-02T03:04:05+00:00",
        "series": {"rmse_a": [], "times": [], "rank_histogram": []},
        "reference": {"rmse_a": ref, "label": label, "citation": citation},
    }
    if series:
        t = np.arange(1, 201) * 0.25
        y = rmse * (1 + 4 * np.exp(-t / 5.0)) * np.exp(0.15 * rng.standard_normal(t.size))
        if diverged_seeds:
            y = y * np.exp(t / t[-1] * 2.0)
        n_members = int(config.get("n_ensemble", 10)) if config else 10
        hist = rng.multinomial(4000, np.ones(n_members + 1) / (n_members + 1))
        cell["series"] = {
            "rmse_a": [float(v) for v in y],
            "times": [float(v) for v in t],
            "rank_histogram": [int(v) for v in hist],
        }
    return cell


def make_results():
    """The synthetic results dict (schema 1)."""
    rng = np.random.default_rng(20250102)
    cells = []
    b = "L63 sakov2012"
    cells += [
        _cell(
            rng,
            b,
            "ETKF",
            "ETKF",
            {
                "n_ensemble": 10,
                "inflation": 1.02,
                "rotate": True,
                "family": "ETKF",
                "settings": "published",
            },
            0.61,
            0.02,
            ref=0.60,
            label="ETKF N=10 infl 1.02 rot",
            citation=CITE_L63,
            sec=2.6e-3,
        ),
        _cell(
            rng,
            b,
            "EnKF-N10",
            "EnKF",
            {"n_ensemble": 10, "inflation": 1.04},
            0.655,
            0.03,
            ref=0.65,
            label="stochastic EnKF N=10 infl 1.04",
            citation=CITE_L63,
            sec=2.9e-3,
        ),
        _cell(
            rng,
            b,
            "EnKF-N100",
            "EnKF",
            {"n_ensemble": 100, "inflation": 1.01},
            0.562,
            0.01,
            ref=0.56,
            label="stochastic EnKF N=100 infl 1.01",
            citation=CITE_L63,
            sec=8.1e-3,
        ),
        _cell(
            rng,
            b,
            "iEnKS-10",
            "iEnKS",
            {"n_ensemble": 10, "inflation": 1.02, "lag": 1},
            0.312,
            0.01,
            ref=0.31,
            label="iEnKS Lag=1 N=10 infl 1.02 rot",
            citation=CITE_L63,
            sec=1.1e-3,
            smoothed=True,
        ),
        _cell(
            rng,
            b,
            "PF-800",
            "PF",
            {"n_ensemble": 800, "resampling": "systematic"},
            0.29,
            0.015,
            ref=0.28,
            label="particle filter N=800",
            citation=CITE_L63,
            sec=3.9e-3,
            compile_s=11.0,
        ),
        _cell(
            rng,
            b,
            "ETKF-N3-noinfl",
            "ETKF",
            {"n_ensemble": 3, "inflation": 1.0},
            1.2,
            0.9,
            ref=0.80,
            label="ETKF N=3 infl 1.30",
            citation=CITE_L63,
            diverged_seeds=(2,),
            sec=1.7e-3,
            spread_noise=0.02,
        ),
        _cell(
            rng,
            b,
            "EnKF-collapse",
            "EnKF",
            {"n_ensemble": 10, "inflation": 1.0},
            2.0,
            0.05,
            spread_factor=0.3,
            spread_noise=0.01,
            sec=2.8e-3,
        ),
        _cell(
            rng,
            b,
            "Var3D",
            "Var3D",
            {"B_scale": 0.25},
            1.25,
            0.02,
            sec=2.1e-4,
            compile_s=0.9,
            citation="",
        ),
    ]
    b = "L96 sakov2008"
    cells += [
        _cell(
            rng,
            b,
            "ETKF",
            "ETKF",
            {
                "n_ensemble": 20,
                "inflation": 1.04,
                "rotate": True,
                "family": "ETKF",
                "settings": "published",
            },
            0.201,
            0.004,
            ref=0.20,
            label="ETKF N=20 infl 1.04 rot",
            citation=CITE_L96,
            sec=1.1e-3,
        ),
        _cell(
            rng,
            b,
            "LETKF-far",
            "LETKF",
            {"n_ensemble": 10, "inflation": 1.04, "loc_rad": 6.0, "taper": "GC"},
            0.35,
            0.01,
            ref=0.20,
            label="LETKF N=10 infl 1.04 loc 6",
            citation=CITE_L96,
            sec=9.0e-3,
        ),
        _cell(
            rng,
            b,
            "DEnKF-better",
            "DEnKF",
            {"n_ensemble": 40, "inflation": 1.01},
            0.10,
            0.003,
            ref=0.18,
            label="DEnKF N=40 infl 1.01",
            citation=CITE_L96,
            sec=1.5e-3,
        ),
        _cell(
            rng,
            b,
            "EnKF",
            "EnKF",
            {"n_ensemble": 40, "inflation": 1.06},
            0.224,
            0.006,
            ref=0.22,
            label="stochastic EnKF N=40 infl 1.06",
            citation=CITE_L96,
            sec=1.4e-3,
        ),
        _cell(
            rng,
            b,
            "EnKF-N20",
            "EnKF",
            {"n_ensemble": 20, "inflation": 1.06},
            0.262,
            0.008,
            sec=1.2e-3,
            citation=CITE_L96,
        ),
        _cell(
            rng,
            b,
            "OptInterp",
            "OptInterp",
            {},
            0.96,
            0.02,
            ref=0.95,
            label="OptInterp",
            citation=CITE_L96,
            sec=6.0e-5,
            compile_s=0.4,
            seeds=(0, 1, 2, 3, 4),
        ),
        _cell(
            rng,
            b,
            "LETKF-lost",
            "LETKF",
            {"n_ensemble": 10, "inflation": 1.0, "loc_rad": 6.0},
            0.5,
            0.01,
            ref=0.20,
            label="LETKF N=10 infl 1.04 loc 6",
            citation=CITE_L96,
            sec=8.0e-3,
        ),
        _cell(
            rng,
            b,
            "ETKF-1seed",
            "ETKF",
            {"n_ensemble": 20, "inflation": 1.04, "rotate": True},
            0.25,
            0.0,
            seeds=(0,),
            ref=0.20,
            label="ETKF N=20 infl 1.04 rot",
            citation=CITE_L96,
            sec=1.0e-3,
        ),
    ]
    # a smoother whose filter estimate is ETKF's (the runner stores it bit for bit)
    etkf = cells[-8]
    assert etkf["method"] == "ETKF" and etkf["benchmark"] == b
    enks = json.loads(json.dumps(etkf))
    enks.update(method="EnKS-ETKF", family="EnKS", seconds_per_cycle=2.3e-3, compile_seconds=4.0)
    enks["config"] = {"n_ensemble": 20, "inflation": 1.04, "rotate": True, "lag": 10}
    enks["rmse_s"] = _stat([0.5 * v for v in etkf["rmse_a"]["per_seed"]])
    for name in ("crps", "rank_chi2"):
        enks[name] = {"mean": None, "std": None, "per_seed": [None] * 3}
    enks["series"]["rank_histogram"] = []
    enks["reference"] = {"rmse_a": None, "label": None, "citation": CITE_L96}
    cells.append(enks)
    b = "KS bocquet2019"
    cells += [
        _cell(
            rng,
            b,
            "ETKF",
            "ETKF",
            {"inflation": 1.03, "rotate": True},
            0.118,
            0.003,
            ref=0.115,
            label="ETKF N=20 infl 1.03 rot",
            citation=CITE_KS,
            sec=4.2e-3,
            n_cycles=400,
            burn_in=50,
        ),
        _cell(
            rng,
            b,
            "LETKF <N=4|loc> & co",
            "LETKF",
            {"n_ensemble": 4, "inflation": 1.11, "loc_rad": 8.24},
            0.19,
            0.01,
            ref=0.18,
            label="LETKF N=4 infl 1.11 loc 15/1.82",
            citation=CITE_KS,
            sec=2.2e-2,
            n_cycles=400,
            burn_in=50,
        ),
        _cell(
            rng,
            b,
            "EnKF-blowup",
            "EnKF",
            {"n_ensemble": 8, "inflation": 1.0},
            math.nan,
            0.0,
            ref=0.5,
            label="OptInterp (for scale)",
            citation=CITE_KS,
            diverged_seeds=(0, 1, 2),
            series=False,
            sec=None,
            compile_s=None,
            n_cycles=400,
            burn_in=50,
            missing="null",
        ),
        _cell(
            rng,
            b,
            "OptInterp",
            "OptInterp",
            {"gain_scale": 0.5},
            0.51,
            0.01,
            ref=0.5,
            label="OptInterp",
            citation=CITE_KS,
            sec=1.0e-4,
            compile_s=0.3,
            series=False,
            n_cycles=400,
            burn_in=50,
        ),
    ]
    b = "Linear40 VI2025"
    cells += [
        _cell(
            rng, b, "KalmanFilter", "KF", {}, 0.745, 0.01, series=False, sec=3.0e-5, compile_s=0.2
        ),
        _cell(
            rng,
            b,
            "EnKF-nan",
            "EnKF",
            {},
            math.nan,
            0.0,
            diverged_seeds=(0, 1, 2),
            series=False,
            sec=2.0e-4,
            compile_s=1.5,
            missing="nan",
        ),
    ]
    # a NaN series: nothing to draw (JSON NaN tokens), no rank histogram
    cells[-1]["series"] = {"rmse_a": [math.nan] * 4, "times": [1.0, 2.0, 3.0, 4.0]}
    cells[-1]["series"]["rank_histogram"] = []
    # the climatological rmse of each seed's truth, as the runner stores it (none for Linear)
    for c in cells:
        clim = CLIMATOLOGY.get(c["benchmark"])
        if clim is not None:
            c["climatology"] = _stat([clim * (1 + 0.001 * k) for k in range(len(c["seeds"]))])
    return {"schema": 1, "cells": {f"{c['benchmark']}/{c['method']}": c for c in cells}}


# What the leaderboard must show for this data (derived by hand from the cases above).
EXPECTED_PLOTS = {
    # rmse-vs-time and rank-histograms need series; ensemble-size needs two or more values of
    # config.n_ensemble among cells with a finite rmse; speed needs a positive s/cycle and a
    # finite rmse.
    "L63 sakov2012": {
        "rmse-vs-time",
        "rank-histograms",
        "rmse-vs-ensemble-size",
        "speed-vs-accuracy",
    },
    "L96 sakov2008": {
        "rmse-vs-time",
        "rank-histograms",
        "rmse-vs-ensemble-size",
        "speed-vs-accuracy",
    },
    # one ensemble size (LETKF N=4; ETKF has none, EnKF-blowup no finite rmse): no N plot
    "KS bocquet2019": {"rmse-vs-time", "rank-histograms", "speed-vs-accuracy"},
    # no series, no n_ensemble: only the speed plot
    "Linear40 VI2025": {"speed-vs-accuracy"},
}
EXPECTED_ORDER = {
    "L63 sakov2012": [
        "PF-800",
        "iEnKS-10",
        "EnKF-N100",
        "ETKF",
        "EnKF-N10",
        "Var3D",
        "ETKF-N3-noinfl",
        "EnKF-collapse",
    ],
    # ETKF and EnKS-ETKF tie on rmse.a: method name breaks the tie ("ETKF" < "EnKS-ETKF")
    "L96 sakov2008": [
        "DEnKF-better",
        "ETKF",
        "EnKS-ETKF",
        "EnKF",
        "ETKF-1seed",
        "EnKF-N20",
        "LETKF-far",
        "OptInterp",
        "LETKF-lost",
    ],
    "KS bocquet2019": ["ETKF", "LETKF <N=4|loc> & co", "OptInterp", "EnKF-blowup"],
    "Linear40 VI2025": ["KalmanFilter", "EnKF-nan"],
}
EXPECTED_SINGLE_SEED = {("L96 sakov2008", "ETKF-1seed")}
EXPECTED_DEVIATES = {
    ("L96 sakov2008", "LETKF-far"): "worse",
    ("L96 sakov2008", "DEnKF-better"): "better",
}
EXPECTED_DIVERGED = {
    ("L63 sakov2012", "ETKF-N3-noinfl"),
    ("L63 sakov2012", "EnKF-collapse"),
    ("L96 sakov2008", "LETKF-lost"),
    ("KS bocquet2019", "EnKF-blowup"),
    ("Linear40 VI2025", "EnKF-nan"),
}


_RENDERED: dict = {}


def render_once(tmp_path_factory):
    """``make_results()`` written as results.json, read back with ``load_results`` and rendered
    with ``render_all``, once per test session (both test modules share it; do not modify).

    Returns ``(results, out_dir, paths)``.
    """
    if not _RENDERED:
        from filterax.bench._leaderboard import load_results, render_all

        results = make_results()
        out = tmp_path_factory.mktemp("leaderboard")
        # Python's json writes NaN tokens for the NaN cells, as the runner's json.dump would
        (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
        paths = render_all(load_results(out), out)
        _RENDERED.update(results=results, out=out, paths=paths)
    return _RENDERED["results"], _RENDERED["out"], _RENDERED["paths"]
