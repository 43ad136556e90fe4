"""Toy systems (oscillator, double well, OU, Brownian motion) and the process-noise wrapper."""

import math

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from filterax.zoo import (
    BrownianMotion,
    DoubleWell,
    Lorenz63,
    Lorenz96,
    OrnsteinUhlenbeck,
    Sinusoid,
    StochasticDynamics,
)

N_SAMPLES = 20_000
# Monte Carlo tolerances: a sample variance from N draws has relative standard error
# sqrt(2/N) = 1% at N = 20,000, so 5% is a 5-sigma bound; a sample mean has standard error
# sd/sqrt(N) = 0.7% of sd, so 4% of sd is a 5.6-sigma bound.
VAR_RTOL = 0.05
MEAN_ATOL_SD = 0.04


def _draws(model, x, t0, t1, key, n=N_SAMPLES):
    keys = jax.random.split(key, n)
    return jax.jit(jax.vmap(lambda k: model(x, t0, t1, key=k)))(keys)


def test_sinusoid_is_an_exact_rotation():
    model = Sinusoid(frequency=2.0)
    x0 = jnp.array([1.0, 0.5])
    x1 = model(x0, 0.3, 0.8)  # angle 1
    np.testing.assert_allclose(
        x1, [math.cos(1) + 0.5 * math.sin(1), -math.sin(1) + 0.5 * math.cos(1)], rtol=1e-14
    )
    assert float(jnp.linalg.norm(x1)) == pytest.approx(float(jnp.linalg.norm(x0)), rel=1e-14)
    np.testing.assert_allclose(model(x0, 0.0, math.pi), x0, atol=1e-14)  # one period
    # rhs is the time derivative of the flow (central difference, O(h^2) = 1e-10).
    h = 1e-5
    deriv = (model(x0, 0.0, h) - model(x0, 0.0, -h)) / (2 * h)
    np.testing.assert_allclose(model.rhs(x0), deriv, atol=1e-8)


def test_double_well_matches_its_closed_form_solution():
    # x(t)^2 = 1 / (1 + (1/x0^2 - 1) exp(-8 t)) with the sign of x0.
    model = DoubleWell()
    x0 = np.array([0.3, -0.2, 1.5, 0.0])
    t = 0.8
    with np.errstate(divide="ignore"):
        want = np.sign(x0) / np.sqrt(1 + (1 / x0**2 - 1) * np.exp(-8 * t))
    want[3] = 0.0
    # RK4 with dt=0.01 has global error ~1e-9 on this smooth flow.
    np.testing.assert_allclose(model(jnp.asarray(x0), 0.0, t), want, atol=1e-7)
    np.testing.assert_allclose(model.rhs(jnp.array([-1.0, 0.0, 1.0])), 0.0, atol=0.0)


def test_ou_mean_decays_exactly_exponentially():
    model = OrnsteinUhlenbeck(theta=0.7, mu=1.5, sigma=0.3)
    x0 = jnp.array([3.0, -1.0, 1.5])
    for t0, t1 in [(0.0, 2.0), (1.3, 1.8), (5.0, 5.0)]:
        want = 1.5 + (np.asarray(x0) - 1.5) * np.exp(-0.7 * (t1 - t0))
        np.testing.assert_allclose(model(x0, t0, t1), want, rtol=1e-14)
    np.testing.assert_allclose(model.rhs(x0), 0.7 * (1.5 - np.asarray(x0)), rtol=1e-15)
    assert float(model.exact_noise_variance(0.0, 2.0)) == pytest.approx(
        0.09 * (1 - math.exp(-2.8)) / 1.4, rel=1e-14
    )


def test_ou_exact_transition_statistics_and_composition(getkey):
    ou = OrnsteinUhlenbeck(theta=0.7, mu=1.5, sigma=0.3)
    model = StochasticDynamics(ou)
    x0 = jnp.array([3.0, -1.0])
    draws = _draws(model, x0, 0.0, 2.0, getkey())
    mean = 1.5 + (np.asarray(x0) - 1.5) * math.exp(-1.4)
    var = 0.09 * (1 - math.exp(-2.8)) / 1.4
    sd = math.sqrt(var)
    np.testing.assert_allclose(draws.mean(axis=0), mean, atol=MEAN_ATOL_SD * sd)
    np.testing.assert_allclose(draws.var(axis=0), var, rtol=VAR_RTOL)
    # Exactness: two transitions over [0, 1] and [1, 2] have the same law as one over [0, 2].
    keys = jax.random.split(getkey(), (N_SAMPLES, 2))
    two_steps = jax.jit(
        jax.vmap(lambda k: model(model(x0, 0.0, 1.0, key=k[0]), 1.0, 2.0, key=k[1]))
    )(keys)
    np.testing.assert_allclose(two_steps.mean(axis=0), mean, atol=MEAN_ATOL_SD * sd)
    np.testing.assert_allclose(two_steps.var(axis=0), var, rtol=VAR_RTOL)


def test_brownian_motion_mean_is_identity_and_variance_grows_linearly(getkey):
    bm = BrownianMotion(sigma=0.3)
    x0 = jnp.array([1.0, -2.0, 0.5])
    np.testing.assert_array_equal(bm(x0, 0.0, 4.0), x0)
    np.testing.assert_array_equal(bm.rhs(x0), jnp.zeros(3))
    draws = _draws(StochasticDynamics(bm), x0, 1.0, 5.0, getkey())
    var = 0.09 * 4.0
    np.testing.assert_allclose(draws.var(axis=0), var, rtol=VAR_RTOL)
    np.testing.assert_allclose(draws.mean(axis=0), x0, atol=MEAN_ATOL_SD * math.sqrt(var))


@pytest.mark.parametrize(
    "noise, variances",
    [
        (0.1, np.full(3, 0.1)),
        (np.array([0.1, 0.5, 2.0]), np.array([0.1, 0.5, 2.0])),
        (lx.DiagonalLinearOperator(jnp.array([0.2, 0.3, 0.4])), np.array([0.2, 0.3, 0.4])),
    ],
    ids=["scalar", "vector", "lineax-diagonal"],
)
def test_process_noise_has_the_requested_variance(getkey, noise, variances):
    model = StochasticDynamics(Lorenz63(), noise=noise)
    x0 = jnp.array([1.509, -1.531, 25.46])
    mean = Lorenz63()(x0, 0.0, 0.05)
    draws = _draws(model, x0, 0.0, 0.05, getkey())
    np.testing.assert_allclose(draws.var(axis=0), variances, rtol=VAR_RTOL)
    np.testing.assert_allclose(
        draws.mean(axis=0), mean, atol=MEAN_ATOL_SD * float(np.sqrt(variances.max()))
    )


def test_dense_process_noise_has_the_requested_covariance(getkey):
    cov = np.array([[1.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]])
    x0 = jnp.zeros(3)
    for noise in [cov, lx.MatrixLinearOperator(jnp.asarray(cov), lx.positive_semidefinite_tag)]:
        draws = _draws(StochasticDynamics(BrownianMotion(), noise=noise), x0, 0.0, 1.0, getkey())
        # Sample covariance entries have standard error <= sqrt((1 + rho^2)/N) * s_i s_j
        # ~ 0.01 here; 0.05 absolute is a 5-sigma bound.
        np.testing.assert_allclose(np.cov(np.asarray(draws).T), cov, atol=0.05)


def test_process_noise_same_key_same_draw_and_different_keys_differ(getkey):
    model = StochasticDynamics(Lorenz96(n=10), noise=0.1)
    x0 = 8.0 + jnp.sin(jnp.arange(10.0))
    key = getkey()
    a = model(x0, 0.0, 0.05, key=key)
    b = model(x0, 0.0, 0.05, key=key)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, model(x0, 0.0, 0.05, key=getkey()))
    # The noise is added once per call, on top of the deterministic forecast.
    deterministic = Lorenz96(n=10)(x0, 0.0, 0.05)
    np.testing.assert_allclose(a - deterministic, model.sample_noise(key, x0, 0.0, 0.05))


def test_process_noise_works_in_float32_inside_a_scan_with_traced_times(getkey):
    model = StochasticDynamics(Lorenz96(n=10), noise=0.1)
    x0 = (8.0 + jnp.sin(jnp.arange(10.0))).astype(jnp.float32)
    key = getkey()

    @jax.jit
    def run(x):
        def body(x, k):
            t = 0.05 * k
            return model(x, t, t + 0.05, key=jax.random.fold_in(key, k)), None

        return jax.lax.scan(body, x, jnp.arange(4))[0]

    out = run(x0)
    assert out.dtype == jnp.float32
    expected = x0
    for k in range(4):
        expected = model(expected, 0.05 * k, 0.05 * (k + 1), key=jax.random.fold_in(key, k))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_noise_covariance_reports_the_operator():
    x = jnp.zeros(3)
    op = StochasticDynamics(Lorenz63(), noise=0.1).noise_covariance(x, 0.0, 0.01)
    np.testing.assert_allclose(op.as_matrix(), 0.1 * np.eye(3))
    exact = StochasticDynamics(BrownianMotion(sigma=2.0)).noise_covariance(x, 0.0, 0.5)
    np.testing.assert_allclose(exact.as_matrix(), 2.0 * np.eye(3))


def test_process_noise_bad_inputs():
    with pytest.raises(ValueError, match="exact_noise_variance"):
        StochasticDynamics(Lorenz63())
    with pytest.raises(ValueError, match=">= 0"):
        StochasticDynamics(Lorenz63(), noise=np.array([0.1, -0.1, 0.1]))
    with pytest.raises(ValueError, match="positive definite"):
        StochasticDynamics(Lorenz63(), noise=np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="square"):
        StochasticDynamics(Lorenz63(), noise=np.ones((2, 3)))
    with pytest.raises(ValueError, match="length 3"):
        StochasticDynamics(Lorenz63(), noise=np.ones(4))(
            jnp.zeros(3), 0.0, 0.01, key=jax.random.key(0)
        )
    with pytest.raises(ValueError, match="t1 >= t0"):
        StochasticDynamics(BrownianMotion())(jnp.zeros(2), 1.0, 0.0, key=jax.random.key(0))


def test_ou_needs_a_positive_rate():
    with pytest.raises(ValueError, match="theta > 0"):
        OrnsteinUhlenbeck(theta=0.0)
