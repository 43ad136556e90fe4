"""Validation that survives tracing: hyper-parameters and noise scales swept with `vmap` or
differentiated with `grad` are checked when the program runs, never silently used."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import presets


def _problem(n_cycles=4, n_e=8):
    ssm = presets.lorenz96_sakov2008()
    xp = ssm.simulate(jax.random.key(0), n_cycles)
    return ssm, xp, ssm.initial_ensemble(jax.random.key(1), n_e)


def _status(method, ssm, xp, e0, **kwargs):
    out = ff.run(method, ssm, e0, xp.observations, xp.times, key=jax.random.key(2), **kwargs)
    return out


# --- hyper-parameters of methods: checked when the module is built, also under vmap --------

TRACED_BAD = {
    "LETKF radius": (lambda v: ff.EnsembleFilter(ff.LETKF(radius=v)), 4.0, -1.0, "LETKF"),
    "LETKF radius nan": (lambda v: ff.EnsembleFilter(ff.LETKF(radius=v)), 4.0, jnp.nan, "LETKF"),
    "inflation factor": (
        lambda v: ff.EnsembleFilter(ff.ETKF(), inflator=fxp.MultiplicativeInflator(v)),
        1.02,
        -1.0,
        "MultiplicativeInflator.factor",
    ),
    "RTPS alpha": (
        lambda v: ff.EnsembleFilter(ff.ETKF(), inflator=fxp.RTPS(v)),
        0.5,
        1.5,
        "RTPS.alpha",
    ),
    "RTPP alpha": (
        lambda v: ff.EnsembleFilter(ff.ETKF(), inflator=fxp.RTPP(v)),
        0.5,
        -0.5,
        "RTPP.alpha",
    ),
    "EnKF_N xN": (lambda v: ff.EnsembleFilter(ff.EnKF_N(xN=v)), 1.0, 0.0, "xN"),
    "additive noise": (
        lambda v: ff.EnsembleFilter(ff.ETKF(), inflator=fxp.AdditiveInflator(v)),
        0.01,
        -0.01,
        "AdditiveInflator.noise",
    ),
}


@pytest.mark.parametrize("case", list(TRACED_BAD))
def test_traced_invalid_hyperparameter_raises_under_vmap(case):
    # Regression: the documented way to tune is vmap/grad over radius, inflation, noise scale,
    # and every positivity check used to be skipped for traced values (a negative LETKF radius,
    # a negative inflation, RTPS alpha outside [0, 1] ran and returned plausible numbers).
    build, good, bad, name = TRACED_BAD[case]
    ssm, xp, e0 = _problem()

    def status(value):
        return _status(build(value), ssm, xp, e0, throw=False).status

    ok = jax.vmap(status)(jnp.array([good, good]))
    np.testing.assert_array_equal(ok, [0, 0])
    with pytest.raises(Exception, match=name):
        jax.block_until_ready(jax.vmap(status)(jnp.array([good, bad])))
    with pytest.raises(Exception, match=name):
        jax.block_until_ready(jax.jit(status)(jnp.asarray(bad)))
    with pytest.raises(ValueError, match=name):
        build(bad)  # concrete: refused at once


def test_traced_invalid_hyperparameter_raises_under_grad():
    ssm, xp, e0 = _problem()

    def loss(radius):
        out = _status(ff.EnsembleFilter(ff.LETKF(radius=radius)), ssm, xp, e0)
        return jnp.mean(out.analysis_mean**2)

    assert np.isfinite(jax.grad(loss)(4.0))
    with pytest.raises(Exception, match="LETKF"):
        jax.block_until_ready(jax.grad(loss)(-4.0))


def test_extended_kf_inflation_is_checked_when_traced():
    with pytest.raises(ValueError, match="ExtendedKF.infl"):
        ff.ExtendedKF(infl=-1.0)
    with pytest.raises(Exception, match="ExtendedKF.infl"):
        jax.block_until_ready(jax.jit(lambda v: ff.ExtendedKF(infl=v).infl)(jnp.nan))
    assert float(jax.jit(lambda v: ff.ExtendedKF(infl=v).infl)(2.0)) == 2.0


def test_valid_traced_hyperparameters_give_the_unbatched_results():
    # The checks change nothing for valid values: vmapped radii equal separate runs.
    ssm, xp, e0 = _problem()
    radii = jnp.array([3.0, 6.0, jnp.inf])

    def mean(radius):
        return _status(ff.EnsembleFilter(ff.LETKF(radius=radius)), ssm, xp, e0).analysis_mean

    batched = jax.vmap(mean)(radii)
    for i, r in enumerate(radii):
        np.testing.assert_allclose(batched[i], mean(float(r)), rtol=1e-12, atol=1e-12)


# --- gradients at the boundary of the admissible range are finite -----------------------


BOUNDARY = {
    "RTPS alpha=0": lambda v: fxp.RTPS(v),
    "RTPS alpha=1": lambda v: fxp.RTPS(v),
    "RTPP alpha=0": lambda v: fxp.RTPP(v),
    "RTPP alpha=1": lambda v: fxp.RTPP(v),
    "factor=1": lambda v: fxp.MultiplicativeInflator(v),
}
BOUNDARY_VALUE = {
    "RTPS alpha=0": 0.0,
    "RTPS alpha=1": 1.0,
    "RTPP alpha=0": 0.0,
    "RTPP alpha=1": 1.0,
    "factor=1": 1.0,
}


@pytest.mark.parametrize("case", list(BOUNDARY))
def test_gradient_at_the_parameter_boundary_is_finite(case):
    ssm, xp, e0 = _problem()

    def loss(value):
        method = ff.EnsembleFilter(ff.ETKF(), inflator=BOUNDARY[case](value))
        return jnp.mean(_status(method, ssm, xp, e0).analysis_mean ** 2)

    g = jax.grad(loss)(BOUNDARY_VALUE[case])
    assert np.isfinite(g), case


def test_gradient_wrt_radius_at_the_taper_support_edge_and_at_infinity_is_finite():
    # Gaspari-Cohn has support [0, 2 radius): with integer grid distances, radius = 2.5 puts
    # observations exactly on the edge; radius = inf is "no localisation".
    ssm, xp, e0 = _problem()

    def loss(radius):
        out = _status(ff.EnsembleFilter(ff.LETKF(radius=radius)), ssm, xp, e0)
        return jnp.mean(out.analysis_mean**2)

    for radius in (2.5, jnp.inf):
        assert np.isfinite(jax.grad(loss)(jnp.asarray(radius))), radius


# --- noise scales: traced invalid noise is a status, never a plausible number -------------


def _scaled(ssm, obs_scale=1.0, proc_scale=None):
    model = eqx.tree_at(lambda m: m.obs_noise, ssm, obs_scale * fxp.as_noise_operator(
        ssm.obs_noise, 40).as_matrix().diagonal())  # fmt: skip
    if proc_scale is not None:
        model = eqx.tree_at(
            lambda m: m.process_noise, model, proc_scale * jnp.ones(40), is_leaf=lambda x: x is None
        )
    return model


@pytest.mark.parametrize("bad", [-1.0, 0.0, jnp.nan, jnp.inf])
def test_traced_invalid_obs_noise_scale_sets_status_invalid_noise(bad):
    # Regression: R <= 0 under vmap gave all-NaN runs reported as "the ensemble became
    # non-finite" (or, for a zero variance, plausible numbers).
    ssm, xp, e0 = _problem()
    method = ff.EnsembleFilter(ff.ETKF())

    def run(scale, throw=False):
        return _status(method, _scaled(ssm, scale), xp, e0, throw=throw)

    out = jax.vmap(run)(jnp.array([1.0, bad]))
    np.testing.assert_array_equal(out.status, [ff.RunResult.OK, ff.RunResult.INVALID_NOISE])
    np.testing.assert_array_equal(out.cycle_status[1], ff.RunResult.INVALID_NOISE)
    assert np.all(np.isnan(out.analysis_mean[1])) and np.all(np.isfinite(out.analysis_mean[0]))
    np.testing.assert_allclose(out.analysis_mean[0], run(1.0).analysis_mean, rtol=1e-12)
    with pytest.raises(Exception, match="noise covariances are invalid"):
        jax.block_until_ready(jax.jit(lambda s: run(s, throw=True).status)(bad))


def test_traced_negative_process_noise_sets_status_invalid_noise():
    ssm, xp, e0 = _problem()
    method = ff.EnsembleFilter(ff.ETKF())

    def status(scale):
        return _status(method, _scaled(ssm, 1.0, scale), xp, e0, throw=False).status

    np.testing.assert_array_equal(
        jax.vmap(status)(jnp.array([0.0, 0.01, -0.01])), [0, 0, ff.RunResult.INVALID_NOISE]
    )


def test_kalman_filter_with_traced_invalid_obs_noise_sets_status():
    ssm, xp, _ = _problem()
    kf = ff.KalmanFilter()

    def status(scale):
        return kf.filter(ssm.x0_mean, ssm.x0_cov, xp.observations, xp.times, ssm.dynamics,
                         ssm.obs_op, scale * jnp.ones(40), throw=False).status  # fmt: skip

    np.testing.assert_array_equal(
        jax.vmap(status)(jnp.array([1.0, -1.0])), [0, ff.KalmanResult.INVALID_NOISE]
    )


# --- EnKF-N with huge R (observations switched off) and the log-likelihood status ----------


@pytest.mark.parametrize(("dtype", "huge"), [(jnp.float32, 1e20), (jnp.float64, 1e200)])
def test_enkf_n_with_huge_obs_noise_keeps_the_forecast(dtype, huge):
    # Regression: a huge R (a common way to switch observations off) made EnKF-N NaN (float32
    # at 1e20, float64 at 1e200): lambda^2 underflowed to 0 in the bracket, 0/0. With R -> inf
    # the observations carry no weight: the analysis mean is the forecast mean.
    ssm, xp, e0 = _problem()
    model = eqx.tree_at(lambda m: m.obs_noise, ssm, fxp.isotropic_noise(huge, 40))
    out = ff.run(ff.EnsembleFilter(ff.EnKF_N()), model, e0.astype(dtype),
                 xp.observations.astype(dtype), xp.times, key=jax.random.key(2))  # fmt: skip
    assert int(out.status) == ff.RunResult.OK
    assert np.all(np.isfinite(out.log_likelihood))
    tol = 1e-5 if dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(out.analysis_mean, out.forecast_mean, rtol=tol, atol=tol)


def test_enkf_n_float32_with_tiny_obs_noise_is_finite():
    # Regression: float32 EnKF-N at R = 1e-8 returned NaN (round-off null directions and a
    # failing Cholesky in the implicit-gradient term).
    ssm, xp, e0 = _problem()
    model = eqx.tree_at(lambda m: m.obs_noise, ssm, fxp.isotropic_noise(1e-8, 40))
    out = ff.run(ff.EnsembleFilter(ff.EnKF_N()), model, e0.astype(jnp.float32),
                 xp.observations.astype(jnp.float32), xp.times, key=jax.random.key(2))  # fmt: skip
    assert int(out.status) == ff.RunResult.OK
    assert np.all(np.isfinite(out.analysis_mean)) and np.all(np.isfinite(out.log_likelihood))


class _NanLikelihood(fxp.AbstractCycledMethod):
    inner: ff.EnsembleFilter

    def init(self, key, initial, model):
        return self.inner.init(key, initial, model)

    def step(self, key, state, model, t_prev, t, obs):
        state, info = self.inner.step(key, state, model, t_prev, t, obs)
        bad = jnp.where(t > 0.1, jnp.nan, info.log_likelihood)
        return state, eqx.tree_at(lambda i: i.log_likelihood, info, bad)


def test_a_non_finite_log_likelihood_is_a_failed_cycle():
    # Regression: float32 log-likelihoods went NaN while status stayed 0; status covers every
    # row a run returns, the log-likelihood included.
    ssm, xp, e0 = _problem()
    out = ff.run(_NanLikelihood(ff.EnsembleFilter(ff.ETKF())), ssm, e0, xp.observations,
                 xp.times, key=jax.random.key(2), throw=False)  # fmt: skip
    assert int(out.status) == ff.RunResult.NONFINITE
    first = int(np.argmax(np.asarray(xp.times) > 0.1))
    assert int(out.first_failure) == first
    with pytest.raises(Exception, match="non-finite"):
        ff.run(_NanLikelihood(ff.EnsembleFilter(ff.ETKF())), ssm, e0, xp.observations,
               xp.times, key=jax.random.key(2))  # fmt: skip
