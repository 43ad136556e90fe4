"""Fuzz: every public filter fed a table of bad inputs gets a clear error or a status flag,
never a silent NaN and never a plausible number with status OK (`filterax.testing.assert_loud`).

Covered: each analysis kernel called directly (eager), each through the driver `run` (eager
refusal; traced noise as a `vmap` member: status), `assimilate` and the Kalman filter's
`filter`; bad noise (NaN, +-inf, negative, zero), a non-finite forecast ensemble, wrong shapes
and dtypes. Known boundary (documented on the failure-modes page): a kernel's `analysis`
called *inside* `jit` with a traced non-finite ensemble returns NaN; the driver turns that
into status 1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.testing import BAD_SCALARS, assert_loud
from filterax.zoo import presets

GRID = jnp.arange(5.0)
KERNELS = {
    "ETKF": ff.ETKF(),
    "EnSRF": ff.EnSRF(),
    "EnSRF_Serial": ff.EnSRF_Serial(),
    "DEnKF": ff.DEnKF(),
    "ESTKF": ff.ESTKF(),
    "StochasticEnKF": ff.StochasticEnKF(),
    "EnKF_N": ff.EnKF_N(),
    "LETKF": ff.LETKF(radius=2.0),
}


def _context(name):
    if name != "LETKF":
        return {}
    return {"state_coords": GRID, "obs_coords": GRID, "distance": fxp.PeriodicDistance(5.0)}


def _ensemble():
    return jax.random.normal(jax.random.key(0), (6, 5))


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("bad", list(BAD_SCALARS))
def test_kernel_analysis_refuses_bad_obs_noise(name, bad):
    kernel, X = KERNELS[name], _ensemble()
    assert_loud(
        lambda: kernel.analysis(
            jax.random.key(1),
            X,
            jnp.zeros(5),
            fxp.IdentityObs(),
            BAD_SCALARS[bad],
            **_context(name),
        ),  # fmt: skip
        match=r"noise|variance",
    )
    variances = jnp.ones(5).at[2].set(BAD_SCALARS[bad])
    assert_loud(
        lambda: kernel.analysis(
            jax.random.key(1), X, jnp.zeros(5), fxp.IdentityObs(), variances, **_context(name)
        ),  # fmt: skip
        match=r"noise|variance",
    )


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("bad", ["nan", "+inf", "-inf"])
def test_kernel_analysis_refuses_a_non_finite_forecast(name, bad):
    kernel = KERNELS[name]
    X = _ensemble().at[2, 1].set(BAD_SCALARS[bad])
    assert_loud(
        lambda: kernel.analysis(
            jax.random.key(1), X, jnp.zeros(5), fxp.IdentityObs(), 1.0, **_context(name)
        ),  # fmt: skip
        match=r"forecast.*finite.*index \(2, 1\)",
    )


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel_analysis_refuses_wrong_shapes_and_dtypes(name):
    kernel, X = KERNELS[name], _ensemble()
    y, H, ctx = jnp.zeros(5), fxp.IdentityObs(), _context(name)
    key = jax.random.key(1)
    cases = [
        (lambda: kernel.analysis(key, X[0], y, H, 1.0, **ctx), r"2-D|shape"),
        (lambda: kernel.analysis(key, X[:1], y, H, 1.0, **ctx), r"N_e=1|at least 2"),
        (lambda: kernel.analysis(key, X.astype(jnp.int32), y, H, 1.0, **ctx), r"float"),
        (lambda: kernel.analysis(key, X, jnp.zeros(4), H, 1.0, **ctx), r"shape|N_y|match"),
        (lambda: kernel.analysis(key, X, y[None], H, 1.0, **ctx), r"1-D|shape"),
        (lambda: kernel.analysis(key, X, y, H, jnp.ones(4), **ctx), r"noise|shape|size"),
    ]
    for call, match in cases:
        # Under the test suite's jaxtyping hook a shape mismatch is caught by the annotations
        # first (a TypeCheckError naming the parameter); users get the library's message.
        assert_loud(call, match=match + "|Type-check error")


def _problem():
    ssm = presets.lorenz96_sakov2008()
    xp = ssm.simulate(jax.random.key(0), 3)
    return ssm, xp, ssm.initial_ensemble(jax.random.key(1), 6)


@pytest.mark.parametrize("bad", list(BAD_SCALARS))
def test_run_and_assimilate_refuse_bad_concrete_noise(bad):
    ssm, xp, e0 = _problem()
    value = BAD_SCALARS[bad]
    for name in ("ETKF", "StochasticEnKF", "EnKF_N", "LETKF"):
        model = fxp.Model(ssm.dynamics, ssm.obs_op, value, state_coords=ssm.state_coords,
                          obs_coords=ssm.obs_coords, distance=ssm.distance)  # fmt: skip
        method = ff.EnsembleFilter(KERNELS[name] if name != "LETKF" else ff.LETKF(radius=6.0))
        assert_loud(
            lambda m=method, mo=model: ff.run(
                m, mo, e0, xp.observations, xp.times, key=jax.random.key(2)
            ),  # fmt: skip
            match="obs_noise",
        )
    assert_loud(
        lambda: ff.assimilate(
            ff.ETKF(),
            ssm.dynamics,
            ssm.obs_op,
            value,
            e0,
            xp.observations,
            xp.times,
            key=jax.random.key(2),
        ),  # fmt: skip
        match="obs_noise",
    )
    assert_loud(
        lambda: ff.KalmanFilter().filter(
            ssm.x0_mean, ssm.x0_cov, xp.observations, xp.times, ssm.dynamics, ssm.obs_op, value
        ),  # fmt: skip
        match="obs_noise",
    )


@pytest.mark.parametrize("name", ["ETKF", "StochasticEnKF", "EnKF_N", "LETKF"])
def test_run_flags_every_bad_traced_noise_scale_in_a_sweep(name):
    ssm, xp, e0 = _problem()
    method = ff.EnsembleFilter(KERNELS[name] if name != "LETKF" else ff.LETKF(radius=6.0))

    def run(scale):
        model = fxp.Model(ssm.dynamics, ssm.obs_op, scale * jnp.ones(40),
                          state_coords=ssm.state_coords, obs_coords=ssm.obs_coords,
                          distance=ssm.distance)  # fmt: skip
        return ff.run(method, model, e0, xp.observations, xp.times, key=jax.random.key(2),
                      throw=False)  # fmt: skip

    scales = jnp.array([1.0, *BAD_SCALARS.values()])
    out = jax.vmap(run)(scales)
    for member in range(1, len(scales)):
        assert assert_loud(lambda o=out: o, match="", member=member) == "status"
    np.testing.assert_array_equal(out.status[0], ff.RunResult.OK)


@pytest.mark.parametrize("bad", ["nan", "+inf"])
def test_run_with_a_non_finite_initial_ensemble_is_flagged(bad):
    ssm, xp, e0 = _problem()
    e0 = e0.at[0, 0].set(BAD_SCALARS[bad])
    for throw in (False, True):
        assert_loud(
            lambda t=throw: ff.run(
                ff.EnsembleFilter(ff.ETKF()),
                ssm,
                e0,
                xp.observations,
                xp.times,
                key=jax.random.key(2),
                throw=t,
            ),  # fmt: skip
            match="non-finite",
        )


def test_run_refuses_wrong_shapes_and_types():
    ssm, xp, e0 = _problem()
    method = ff.EnsembleFilter(ff.ETKF())
    ys, ts = xp.observations, xp.times
    key = jax.random.key(2)
    cases = [
        (lambda: ff.run(method, ssm, e0, ys[0], ts, key=key), r"2-D"),
        (lambda: ff.run(method, ssm, e0, ys, ts[:2], key=key), r"obs_times must have shape"),
        (lambda: ff.run(method, ssm, e0, ys, ts, key=None), r"key"),
        (lambda: ff.run(method, ssm, e0, ys, ts, key=key, save="all"), r"save must be"),
        (lambda: ff.run(method, ssm, e0[0], ys, ts, key=key), r"2-D|shape"),
        (lambda: ff.run(method, ssm, e0.astype(jnp.int32), ys, ts, key=key), r"float"),
        (lambda: ff.run(method, "model", e0, ys, ts, key=key), r"AbstractModel|Model"),
        (
            lambda: ff.run(method, ssm, e0, ys, ts, key=key, divergence_threshold=-1.0),
            r"divergence_threshold",
        ),
    ]
    for call, match in cases:
        # Under the test suite's jaxtyping hook a shape mismatch is caught by the annotations
        # first (a TypeCheckError naming the parameter); users get the library's message.
        assert_loud(call, match=match + "|Type-check error")
