"""Constrained priors: moment matching, bounds, round trips, pytrees, gradients, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

from filterax.processes import (
    ParameterDistribution,
    combine_distributions,
    constrained_gaussian,
    to_constrained,
    to_unconstrained,
)

INF = math.inf


def _pushforward_moments(mu, sigma, lower, upper):
    """Mean and std of T(U), U ~ N(mu, sigma^2), by adaptive quadrature (scipy.integrate.quad).

    An independent reference for `constrained_gaussian`'s own trapezoid-rule Newton solve.
    """

    def transform(u):
        if math.isfinite(lower) and math.isfinite(upper):
            return lower + (upper - lower) * special.expit(u)
        if math.isfinite(lower):
            return lower + math.exp(u)
        if math.isfinite(upper):
            return upper - math.exp(u)
        return u

    def moment(k):
        def integrand(z):
            return transform(mu + sigma * z) ** k * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

        return integrate.quad(integrand, -40, 40, epsabs=1e-13, epsrel=1e-13, limit=400)[0]

    m1, m2 = moment(1), moment(2)
    return m1, math.sqrt(m2 - m1**2)


CASES = [
    (0.3, 0.1, 0.0, 1.0),  # logit-normal, moderate
    (0.9, 0.2, 0.0, 1.0),  # logit-normal, near the upper bound, large spread
    (5.0, 3.0, 2.0, 10.0),  # logit-normal on a shifted, scaled interval
    (2.0, 1.0, 0.0, INF),  # log-normal
    (-2.0, 0.5, -INF, 0.0),  # reflected log-normal (bounded above)
    (1.5, 0.7, -INF, INF),  # plain Gaussian
]


@pytest.mark.parametrize("mean,std,lower,upper", CASES)
def test_constrained_gaussian_matches_constrained_moments(mean, std, lower, upper):
    prior = constrained_gaussian(mean, std, lower, upper)
    mu, sigma = float(prior.mean[0]), math.sqrt(float(prior.cov[0, 0]))
    m, s = _pushforward_moments(mu, sigma, lower, upper)
    # Newton solves to 1e-12 relative on a spectrally accurate rule; quad agrees to ~1e-11.
    assert m == pytest.approx(mean, rel=1e-8)
    assert s == pytest.approx(std, rel=1e-8)


def test_lognormal_case_is_closed_form():
    prior = constrained_gaussian(3.0, 2.0, lower=1.0)
    d = 2.0
    var = math.log(1 + (2.0 / d) ** 2)
    np.testing.assert_allclose(prior.mean, [math.log(d) - var / 2], rtol=1e-14)
    np.testing.assert_allclose(prior.cov, [[var]], rtol=1e-14)


def test_samples_have_the_requested_constrained_moments(getkey):
    prior = constrained_gaussian(0.3, 0.1, 0.0, 1.0, repeats=2)
    x = np.asarray(prior.to_constrained(prior.sample(getkey(), 200_000)))
    assert x.shape == (200_000, 2)
    # Monte Carlo: standard error of the mean is 0.1 / sqrt(2e5) ~ 2.2e-4; allow 5 of them.
    np.testing.assert_allclose(x.mean(0), 0.3, atol=5 * 0.1 / math.sqrt(2e5))
    # The std's standard error is ~ std / sqrt(2n) (near-Gaussian tails); 5 of them.
    np.testing.assert_allclose(x.std(0), 0.1, atol=5 * 0.1 / math.sqrt(4e5))
    # Independent blocks: the components are uncorrelated.
    assert abs(np.corrcoef(x.T)[0, 1]) < 5 / math.sqrt(2e5)


@pytest.mark.parametrize("mean,std,lower,upper", CASES)
def test_constrained_values_respect_bounds(mean, std, lower, upper):
    prior = constrained_gaussian(mean, std, lower, upper)
    u = jnp.linspace(-50.0, 50.0, 2001)[:, None]
    x = np.asarray(prior.to_constrained(u))
    assert np.all(x >= lower) and np.all(x <= upper)
    # Moderate u stays strictly inside (float64 sigmoid/exp saturate only for |u| >~ 37).
    inner = np.asarray(prior.to_constrained(jnp.linspace(-20.0, 20.0, 101)[:, None]))
    assert np.all(inner > lower) and np.all(inner < upper)


def test_round_trip_mixed_bounds(getkey):
    prior = combine_distributions(
        constrained_gaussian(0.3, 0.1, 0.0, 1.0, name="a"),
        constrained_gaussian(2.0, 1.0, lower=0.0, name="b", repeats=2),
        constrained_gaussian(-1.0, 0.5, upper=0.0, name="c"),
        constrained_gaussian(0.0, 1.0, name="d"),
    )
    u = 3.0 * jax.random.normal(getkey(), (500, prior.n_params))
    back = prior.to_unconstrained(prior.to_constrained(u))
    # |u| <= ~12 here; the logit of a sigmoid loses ~exp(|u|) * eps relative accuracy.
    np.testing.assert_allclose(back, u, rtol=0, atol=1e-9)
    x = prior.to_constrained(u)
    np.testing.assert_allclose(prior.to_constrained(prior.to_unconstrained(x)), x, rtol=1e-12)
    # The module-level functions are the methods.
    np.testing.assert_array_equal(to_constrained(prior, u), x)
    np.testing.assert_array_equal(to_unconstrained(prior, x), prior.to_unconstrained(x))


def test_dictionary_round_trip_and_unflatten():
    prior = combine_distributions(
        constrained_gaussian(1.0, 0.5, lower=0.0, name="k"),
        constrained_gaussian(0.5, 0.1, 0.0, 1.0, name="c", repeats=3),
    )
    tree = {"k": jnp.asarray(2.0), "c": jnp.asarray([0.2, 0.5, 0.9])}
    u = prior.to_unconstrained(tree)
    assert set(u) == {"k", "c"} and u["k"].shape == (1,) and u["c"].shape == (3,)
    np.testing.assert_allclose(u["k"], [math.log(2.0)], rtol=1e-14)
    np.testing.assert_allclose(u["c"], special.logit([0.2, 0.5, 0.9]), rtol=1e-12)
    x = prior.to_constrained(u)
    np.testing.assert_allclose(x["k"], [2.0], rtol=1e-14)
    np.testing.assert_allclose(x["c"], [0.2, 0.5, 0.9], rtol=1e-12)
    flat = prior.flatten(tree)
    np.testing.assert_array_equal(flat, [2.0, 0.2, 0.5, 0.9])
    batch = prior.unflatten(jnp.ones((7, 4)))
    assert batch["k"].shape == (7, 1) and batch["c"].shape == (7, 3)


def test_combine_is_block_diagonal():
    a = constrained_gaussian(0.3, 0.1, 0.0, 1.0, name="a", repeats=2)
    b = constrained_gaussian(2.0, 1.0, lower=0.0, name="b")
    prior = combine_distributions(a, b)
    assert prior.names == ("a", "b") and prior.sizes == (2, 1)
    expected = np.zeros((3, 3))
    expected[:2, :2] = np.asarray(a.cov)
    expected[2:, 2:] = np.asarray(b.cov)
    np.testing.assert_array_equal(prior.cov, expected)
    np.testing.assert_array_equal(prior.lower, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(prior.upper, [1.0, 1.0, INF])


def test_general_gaussian_block_with_full_covariance(getkey):
    cov = np.array([[1.0, 0.8], [0.8, 2.0]])
    prior = ParameterDistribution(jnp.array([0.5, -1.0]), cov, lower=[0.0, -INF], names=["p"])
    u = prior.sample(getkey(), 100_000)
    # Sample covariance of 1e5 draws: entries within ~5 * sqrt(2/n) * scale.
    np.testing.assert_allclose(np.cov(np.asarray(u).T), cov, atol=5 * math.sqrt(2e-5) * 2)
    x = prior.to_constrained(u)
    assert np.all(np.asarray(x[:, 0]) > 0)
    np.testing.assert_array_equal(x[:, 1], u[:, 1])


def test_transform_gradients_are_finite_and_exact():
    # Regression: infinite bounds are replaced by safe stand-ins inside every jnp.where branch,
    # so unused branches cannot put NaN into gradients.
    lower = jnp.array([0.0, 0.0, -INF, -INF])
    upper = jnp.array([2.0, INF, 1.0, INF])
    prior = ParameterDistribution(jnp.zeros(4), jnp.ones(4), lower, upper)
    u = jnp.array([0.3, -0.4, 0.7, 1.1])
    jac = jax.jacfwd(prior.to_constrained)(u)
    s = special.expit(0.3)
    expected = np.diag([2 * s * (1 - s), math.exp(-0.4), -math.exp(0.7), 1.0])
    np.testing.assert_allclose(jac, expected, rtol=1e-13)
    x = prior.to_constrained(u)
    jac_inv = jax.jacrev(prior.to_unconstrained)(x)
    np.testing.assert_allclose(jac_inv, np.linalg.inv(expected), rtol=1e-12)


def test_prior_passes_through_jit_and_vmap(getkey):
    prior = constrained_gaussian(0.3, 0.1, 0.0, 1.0, repeats=3)
    u = jax.random.normal(getkey(), (5, 3))
    eager = prior.to_constrained(u)
    np.testing.assert_array_equal(jax.jit(lambda p, v: p.to_constrained(v))(prior, u), eager)
    np.testing.assert_array_equal(jax.vmap(prior.to_constrained)(u), eager)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mean=1.5, std=0.1, lower=0.0, upper=1.0), "strictly inside"),
        (dict(mean=0.5, std=0.5, lower=0.0, upper=1.0), "too large"),
        (dict(mean=0.5, std=-1.0), "positive"),
        (dict(mean=-1.0, std=1.0, lower=0.0), "strictly inside"),
    ],
)
def test_constrained_gaussian_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        constrained_gaussian(**kwargs)


def test_bad_shapes_and_names_are_rejected():
    a = constrained_gaussian(0.0, 1.0, name="x")
    with pytest.raises(ValueError, match="unique"):
        combine_distributions(a, a)
    with pytest.raises(ValueError, match="last axis"):
        a.to_constrained(jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="keys"):
        a.to_constrained({"y": jnp.ones(1)})
    with pytest.raises(ValueError, match="lower < upper"):
        ParameterDistribution(jnp.zeros(1), jnp.ones(1), lower=1.0, upper=0.0)
    with pytest.raises(TypeError, match="ParameterDistribution"):
        combine_distributions("x")
