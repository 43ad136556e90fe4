"""The static flow benchmarks (issue 13 §3) as experiments: the grid posterior and W1 against
independent references, and a mini run with the flow fit replaced by a fake (the real fits are
the experiment itself; compiling them takes longer than this file's budget)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

import filterax.bench as fb
from filterax.bench import _experiments_flow as ef
from filterax.bench._experiment_plots import make_experiment_plots


def test_registered():
    for problem in ("square", "abs"):
        exp = fb.get_experiment(f"flow_static_{problem}")
        assert [(t.key, t.comparison, t.value) for t in exp.targets] == [
            ("spline.w1_mean", "<", "enkf_w1_third"),
            ("spline.w1_mean", "<=", 0.05),
        ]
        assert "N = 1000" in exp.sizes["quick"] and "N = 2000" in exp.sizes["full"]
        assert exp.plot == ("posterior-histogram",)


def test_grid_posterior_modes_and_mass():
    """p(x | y* = 1) for y = x² + N(0, 0.25): d/dx log p = -x + 8x(1 - x²) = 0 puts the modes
    at ±sqrt(7/8) exactly; the density integrates to one and is symmetric."""
    grid, dens, cdf = ef.grid_posterior(lambda x: x**2)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-12)
    assert cdf[-1] == 1.0 and np.all(np.diff(cdf) >= 0)
    np.testing.assert_allclose(dens, dens[::-1], atol=1e-12)
    right = grid > 0
    # the grid spacing is 5e-4: the argmax is within one spacing of the analytic mode
    assert abs(grid[right][np.argmax(dens[right])] - np.sqrt(7 / 8)) <= 5e-4
    assert cdf[len(grid) // 2] == pytest.approx(0.5, abs=1e-4)  # half the mass below 0


def test_w1_against_scipy():
    """`w1_to_grid` against scipy's W1 between the samples and the grid points weighted by the
    density: both integrate |F_N - F|, differing only by the discretisation (grid spacing 5e-4
    on [-6, 6], so agreement to 1e-3 is loose)."""
    grid, dens, cdf = ef.grid_posterior(abs)
    rng = np.random.default_rng(0)
    for samples in (
        rng.normal(size=300),
        0.9 * rng.choice([-1, 1], 300) + 0.3 * rng.normal(size=300),
    ):
        ref = wasserstein_distance(samples, grid, v_weights=dens)
        assert ef.w1_to_grid(samples, grid, cdf) == pytest.approx(ref, abs=1e-3)


def test_mini_run_with_fake_fit(monkeypatch):
    """The whole run with the compiled fit replaced by the EnKF move itself (so the 'flows'
    must score exactly the EnKF's W1), checked against a numpy EnKF and fed to the targets and
    the figure."""
    seen = []

    def fake_analyser(steps):
        def analyse(flow, x, y):
            seen.append(steps)
            gain = flow.layers[0].gain  # the EnKF normaliser replaced the untrained first layer
            return x + (ef.Y_STAR - y) @ gain.T

        return analyse

    monkeypatch.setattr(ef, "_analyser", fake_analyser)
    stages = []
    r = ef.run_flow_static(
        "square", 300, 7, 2, layers=1, progress=lambda s, d, t: stages.append((d, t))
    )
    assert stages == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert seen == [7] * 6  # seed 0: warm-up + timed per architecture; seed 1: timed
    import jax

    grid, _, cdf = ef.grid_posterior(lambda x: x**2)
    for seed in range(2):
        k_x, k_y, _ = jax.random.split(jax.random.key(seed), 3)
        x = np.asarray(jax.random.normal(k_x, (300, 1)))[:, 0]
        y = x**2 + ef.SIGMA * np.asarray(jax.random.normal(k_y, (300, 1)))[:, 0]
        # numpy EnKF: K = Cov(x, y) / Var(y) (the normaliser's jitter 1e-10 is negligible)
        gain = np.cov(x, y)[0, 1] / np.var(y, ddof=1)
        ref = ef.w1_to_grid(x + gain * (ef.Y_STAR - y), grid, cdf)
        assert r["enkf"]["w1"][seed] == pytest.approx(ref, abs=1e-8)
        assert r["spline"]["w1"][seed] == pytest.approx(ref, abs=1e-8)
    # EnKF ≈ prior here: W1 of N(0,1) to the bimodal posterior is ~0.24; 300 samples give
    # a Monte Carlo spread of a few 0.01, so 0.15-0.35 cannot be missed by chance
    assert 0.15 < r["enkf"]["w1_mean"] < 0.35
    assert r["enkf_w1_third"] == pytest.approx(r["enkf"]["w1_mean"] / 3)
    assert r["affine"]["seconds_per_fit"] >= 0 and "seconds_per_fit" not in r["enkf"]
    assert r["config"]["affine_layers"] == 2
    checks = fb.evaluate_targets(fb.get_experiment("flow_static_square").targets, r)
    assert [c["passed"] for c in checks] == [False, False]  # a 'flow' equal to the EnKF fails
    fig = r["figure"]
    assert len(fig["hist_edges"]) == 61 and all(len(h) == 60 for h in fig["hist"].values())
    record = {"flow_static_square": {"title": "t", "plot": ["posterior-histogram"], "result": r}}
    plots = make_experiment_plots(record)
    assert [p.kind for p in plots] == ["posterior-histogram"]
    assert plots[0].png.startswith(b"\x89PNG") and plots[0].width > 600
    with pytest.raises(ValueError, match="use one of"):
        ef.run_flow_static("cube", 10, 1, 1)
    with pytest.raises(ValueError, match="positive int"):
        ef.run_flow_static("abs", 0, 1, 1)
