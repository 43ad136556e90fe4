"""The amortised leaderboard rows load their shipped weights and run through the driver."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.bench as fb
import filterax.filters as ff
from filterax.bench import _methods_amortised as am

ROWS = [
    ("Amortised-ETKF-10", "ETKF-10", "lorenz63_sakov2012"),
    ("Amortised-LETKF-10", "LETKF-10", "lorenz96_sakov2008"),
]


def test_the_l96_row_uses_the_letkf_10_rows_settings():
    # The amortised row corrects the registered base row: same N_e, inflation, loc_rad.
    base = fb.get_method("LETKF-10")
    assert base.settings["lorenz96_sakov2008"] == {
        "inflation": am.L96_INFLATION,
        "localization_radius": am.L96_LOC_RADIUS,
    }
    assert base.n_ensemble == am.L96_N_ENSEMBLE and not base.rotate
    # Package data, small enough to ship.
    assert am.L96_WEIGHTS.stat().st_size < 100_000


@pytest.mark.parametrize(("row", "base_row", "bench_name"), ROWS)
def test_amortised_row_loads_its_weights_and_runs_five_cycles(row, base_row, bench_name):
    method = fb.get_method(row)
    bench = fb.get_benchmark(bench_name)
    assert bench_name in method.settings
    amortised = method.build_filter({}, bench)
    network = amortised.kernel.network
    if isinstance(network, am.MeanCorrection):
        network = network.network
    # Trained weights were read (the zero-initialised last layer is the untrained net).
    assert float(jnp.max(jnp.abs(network.rho.layers[-1].weight))) > 0.0

    ssm = bench.ssm
    xp = ssm.simulate(jax.random.key(7), 5)
    x0 = ssm.initial_ensemble(jax.random.key(8), method.n_ensemble)
    run = ff.run(amortised, ssm, x0, xp.observations, xp.times, key=jax.random.key(9))
    assert int(run.status) == ff.RunResult.OK
    assert bool(jnp.all(jnp.isfinite(run.analysis_mean)))
    # The network acts: the analyses differ from the base row's, same twin and keys.
    base = fb.get_method(base_row)
    params = base.settings[bench_name]
    base_filter = ff.EnsembleFilter(
        base.build_filter(params, bench),
        inflator=base.build_inflator(params, bench),
        rotate=base.rotate,
        context=bench.context() if base.context else None,
    )
    ref = ff.run(base_filter, ssm, x0, xp.observations, xp.times, key=jax.random.key(9))
    assert not np.allclose(run.analysis_mean, ref.analysis_mean, atol=1e-8, rtol=0)


def test_mean_correction_shifts_every_member_alike_and_keeps_the_anomalies():
    net = am.load_network(am.L96_WEIGHTS, am.l96_network)
    rng = np.random.default_rng(0)
    xf = jnp.asarray(rng.normal(size=(10, 40)) + 2.0)
    xb = xf + 0.2 * jnp.asarray(rng.normal(size=(10, 40)))
    delta = np.asarray(net(xf, xb))
    inner = np.asarray(net.network(xf, xb))
    # every member gets the member-mean of the inner network's output (1e-12: round-off)
    np.testing.assert_allclose(delta, np.broadcast_to(inner.mean(0), delta.shape), atol=1e-12)
    assert float(np.max(np.abs(delta))) > 1e-4  # a non-trivial correction
    # ... so the analysis anomalies are those of the base analysis
    xb = np.asarray(xb)
    xa = xb + delta
    np.testing.assert_allclose(xa - xa.mean(0), xb - xb.mean(0), atol=1e-12)
