"""The VI-cost column (Bach et al. 2025, eq. 2.5 per cycle, Remark 2.3): harness and leaderboard."""

from __future__ import annotations

import copy
import json

import jax.numpy as jnp
import numpy as np
import pytest

import filterax.bench as fb
import filterax.filters as fxf
import filterax.primitives as fxp
from filterax.bench import _runner
from filterax.bench._html import render_html
from filterax.bench._leaderboard import MISSING, render_markdown, vi_cost_text
from filterax.zoo import Lorenz96, StateSpaceModel

N_X, N_E, N_CYCLES, BURN = 6, 5, 40, 10
SIGMA = 0.05  # model-noise variance: the driver draws it into every forecast member


def _noisy_model() -> StateSpaceModel:
    return StateSpaceModel(
        dynamics=Lorenz96(n=N_X, forcing=8.0, dt=0.05),
        obs_op=fxp.IndexObs(jnp.arange(0, N_X, 2)),
        obs_noise=1.0,
        process_noise=SIGMA,
        dt_obs=0.05,
        x0_mean=jnp.full(N_X, 8.0).at[0].add(1.0),
        x0_cov=1.0,
        burn_in=0.5,  # 10 cycles
        name="vi_tiny_l96",
    )


def _benchmark() -> fb.Benchmark:
    return fb.Benchmark(name="test_vi_tiny", model=_noisy_model, n_cycles=N_CYCLES, seeds=(0, 1))


def _method(name="test-vi-ETKF", kernel=None) -> fb.MethodConfig:
    return fb.MethodConfig(
        name=name, family="ETKF", filter=kernel or fxf.ETKF(), n_ensemble=N_E, inflation=1.1
    )


def _lw(c, gamma=0.1):
    return (1 - gamma) * c + gamma * np.trace(c) / c.shape[0] * np.eye(c.shape[0])


def _numpy_cost(xf, xa, y, idx, r):
    """Dense numpy eq. 2.5a per cycle: KL of the LW(0.1) Gaussian projections (forecast
    covariance as sampled: Sigma is already in the members) minus the member log-likelihood."""
    n = xf.shape[1]
    cf, ca = _lw(np.cov(xf.T)), _lw(np.cov(xa.T))
    iq = np.linalg.inv(cf)
    d = xf.mean(0) - xa.mean(0)
    kl = 0.5 * (
        np.trace(iq @ ca) + d @ iq @ d - n + np.linalg.slogdet(cf)[1] - np.linalg.slogdet(ca)[1]
    )
    res = y[None, :] - xa[:, idx]
    ll = -0.5 * (len(idx) * np.log(2 * np.pi * r) + np.sum(res**2, axis=1) / r)
    return kl - ll.mean()


def test_vi_cost_of_a_run_matches_dense_numpy(registry_snapshot, tmp_path):
    bench, method = _benchmark(), _method()
    results = fb.run([method], [bench], seeds=[0, 1], out=tmp_path, progress=False)
    cell = results["cells"]["test_vi_tiny/test-vi-ETKF"]
    assert cell["burn_in_cycles"] == BURN
    model = bench.ssm
    idx = np.arange(0, N_X, 2)
    per_seed = []
    for seed in (0, 1):
        k_truth, k_ens, k_da = fb.seed_keys(seed)
        twin = model.simulate(k_truth, N_CYCLES)
        filt = fxf.EnsembleFilter(fxf.ETKF(), inflator=fxp.MultiplicativeInflator(1.1))
        res = fxf.run(
            filt,
            model,
            model.initial_ensemble(k_ens, N_E),
            twin.observations,
            twin.times,
            key=k_da,
            save="forecast_and_analysis",
        )
        xf, xa = np.asarray(res.forecasts), np.asarray(res.analyses)
        y = np.asarray(twin.observations)
        # the same run as the harness's (its rmse.a agrees to round-off)
        rmse = np.sqrt(np.mean((xa.mean(1) - np.asarray(twin.truth)) ** 2, axis=-1))[BURN:].mean()
        np.testing.assert_allclose(cell["rmse_a"]["per_seed"][seed], rmse, rtol=1e-8)
        costs = [_numpy_cost(xf[j], xa[j], y[j], idx, 1.0) for j in range(BURN, N_CYCLES)]
        per_seed.append(np.mean(costs))
    # vmapped float64 evaluation vs eager numpy: round-off only (costs are O(10))
    np.testing.assert_allclose(cell["vi_cost"]["per_seed"], per_seed, rtol=1e-8)
    assert cell["vi_cost"]["mean"] == pytest.approx(np.mean(per_seed), rel=1e-12)
    assert cell["vi_cost"]["std"] == pytest.approx(np.std(per_seed, ddof=1), rel=1e-12)
    # the cell's Markdown shows it as mean ± s.e.
    assert " ± " in vi_cost_text(cell)


class _BlowUp(fxp.AbstractSequentialFilter):
    """Produces a non-finite ensemble (a failed run)."""

    def analysis(self, key, forecast, obs, obs_op, obs_noise, **context):
        blown = jnp.where(jnp.max(jnp.abs(forecast)) > 0, jnp.inf, 0.0) * forecast
        return fxp.Analysis(blown, jnp.zeros((), forecast.dtype))


def test_a_failed_run_has_no_vi_cost(registry_snapshot, tmp_path):
    method = _method("blow-up", _BlowUp())
    fb.run([method], [_benchmark()], seeds=[0, 1], out=tmp_path, progress=False)
    cell = json.loads((tmp_path / "results.json").read_text())["cells"]["test_vi_tiny/blow-up"]
    assert cell["vi_cost"] == {"mean": None, "std": None, "per_seed": [None, None]}
    assert vi_cost_text(cell) == MISSING


def test_one_failed_seed_leaves_no_plausible_mean():
    stats = _runner._strict_stats([12.5, None, 12.7])
    assert stats["mean"] is None and stats["std"] is None
    assert stats["per_seed"] == [12.5, None, 12.7]
    assert _runner._strict_stats([1.0, 3.0])["mean"] == pytest.approx(2.0)
    # a hand-made cell with a mean over the surviving seeds still renders "—"
    cell = {"seeds": [0, 1], "vi_cost": {"mean": 5.0, "std": 0.0, "per_seed": [5.0, None]}}
    assert vi_cost_text(cell) == MISSING


def _results_with_vi_cost():
    def cell(method, rmse, vi):
        return {
            "method": method,
            "benchmark": "bench_x",
            "family": "ETKF",
            "config": {"n_ensemble": 10},
            "seeds": [0, 1],
            "n_cycles": 100,
            "burn_in_cycles": 10,
            "rmse_a": {
                "mean": float(np.mean(rmse)),
                "std": float(np.std(rmse, ddof=1)),
                "per_seed": rmse,
            },  # fmt: skip
            "spread_a": {"mean": float(np.mean(rmse)), "std": 0.0, "per_seed": rmse},
            "vi_cost": vi,
            "diverged": False,
            "diverged_seeds": [],
            "seconds_per_cycle": 1e-4,
            "compile_seconds": 1.0,
        }

    return {
        "schema": 1,
        "cells": {
            "bench_x/A": cell(
                "A", [0.2, 0.22], {"mean": 41.25, "std": 0.5, "per_seed": [40.9, 41.6]}
            ),  # fmt: skip
            "bench_x/B": cell(
                "B", [0.3, 0.31], {"mean": None, "std": None, "per_seed": [55.0, None]}
            ),  # fmt: skip
        },
    }


def test_the_column_and_its_legend_appear_in_the_leaderboard():
    results = _results_with_vi_cost()
    md = render_markdown(results, plots={})
    header = next(line for line in md.splitlines() if line.startswith("| #"))
    assert "VI cost" in header
    row_a = next(line for line in md.splitlines() if line.startswith("| 1 "))
    row_b = next(line for line in md.splitlines() if line.startswith("| 2 "))
    assert "41.2 ± 0.4" in row_a  # s.e. = 0.5/sqrt(2) = 0.35 -> 1 significant digit
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert [c.strip() for c in row_b.strip("|").split("|")][cols.index("VI cost")] == MISSING
    assert "VI cost (Bach et al. 2025, eq. 2.5 per cycle; lower is better)" in md
    page = render_html(results, plots=[])
    assert "VI cost" in page and 'id="rule-vi-cost"' in page and "41.2 ± 0.4" in page
    # without any VI cost in a benchmark, the (optional) column is left out of its table
    bare = copy.deepcopy(results)
    for c in bare["cells"].values():
        del c["vi_cost"]
    header = next(line for line in render_markdown(bare, plots={}).splitlines()
                  if line.startswith("| #"))  # fmt: skip
    assert "VI cost" not in header
