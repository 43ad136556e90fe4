"""The CRPS column of particle filters: the weighted CRPS of their saved weighted particles."""

from __future__ import annotations

import numpy as np

import filterax.bench as fb
import filterax.filters as fxf
import filterax.primitives as fxp
from filterax.learn import BootstrapPF
from filterax.zoo import Lorenz96, StateSpaceModel

N_X, N_P, N_CYCLES, BURN = 4, 24, 20, 5


def _model() -> StateSpaceModel:
    return StateSpaceModel(
        dynamics=Lorenz96(n=N_X, forcing=8.0, dt=0.05),
        obs_op=fxp.IndexObs(np.arange(0, N_X, 2)),
        obs_noise=1.0,
        process_noise=0.05,
        dt_obs=0.05,
        x0_mean=np.full(N_X, 8.0),
        x0_cov=1.0,
        burn_in=0.25,  # 5 cycles
        name="pf_crps_tiny_l96",
    )


def _numpy_weighted_crps(x, lw, y):
    """The O(N^2) double sum with the unbiased 1/(1 - sum W^2) spread term (fair)."""
    w = np.exp(lw - lw.max())
    w /= w.sum()
    skill = np.einsum("i,ik->k", w, np.abs(x - y))
    pairs = np.einsum("i,j,ijk->k", w, w, np.abs(x[:, None] - x[None, :]))
    return skill - 0.5 * pairs / (1 - np.sum(w * w))


def test_particle_filter_row_scores_the_weighted_crps(registry_snapshot, tmp_path):
    bench = fb.Benchmark(name="test_pf_crps", model=_model, n_cycles=N_CYCLES, seeds=(0,))
    method = fb.MethodConfig(
        name="test-BootstrapPF", family="BootstrapPF", filter=BootstrapPF(), kind="cycled",
        n_ensemble=N_P,
    )  # fmt: skip
    results = fb.run([method], [bench], seeds=[0], out=tmp_path, progress=False)
    cell = results["cells"]["test_pf_crps/test-BootstrapPF"]
    crps = cell["crps"]["per_seed"][0]
    assert crps is not None and np.isfinite(crps)
    # The same run by hand: the saved analysis is the reweighted, not yet resampled particles,
    # so its weights are unequal and the weighted score differs from the unweighted one.
    k_truth, k_init, k_da = fb.seed_keys(0)
    model = bench.ssm
    twin = model.simulate(k_truth, N_CYCLES)
    out = fxf.run(
        BootstrapPF(), model, model.initial_ensemble(k_init, N_P), twin.observations,
        twin.times, key=k_da, save="forecast_and_analysis",
    )  # fmt: skip
    x = np.asarray(out.analyses.particles)
    lw = np.asarray(out.analyses.log_weights)
    truth = np.asarray(twin.truth)
    assert np.ptp(lw[BURN:], axis=1).min() > 1e-3  # unequal weights every cycle
    expected = np.mean(
        [_numpy_weighted_crps(x[t], lw[t], truth[t]).mean() for t in range(BURN, N_CYCLES)]
    )
    np.testing.assert_allclose(crps, expected, rtol=1e-9)  # vmapped jit vs numpy: round-off
    unweighted = np.mean(
        [
            np.asarray(fxp.crps_ensemble(x[t], truth[t], fair=True)).mean()
            for t in range(BURN, N_CYCLES)
        ]
    )
    assert abs(unweighted - expected) > 1e-3
    # the PIT histogram of the weighted particles: one count per component and cycle
    assert sum(cell["series"]["rank_histogram"]) == N_X * (N_CYCLES - BURN)
