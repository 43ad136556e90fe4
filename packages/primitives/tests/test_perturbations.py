"""Perturbed observations: determinism, R-aware sampling statistics, centring, missing entries."""

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

import filterax.primitives as fxp
from filterax.primitives import diagonal_noise, low_rank_noise, perturbed_observations
from filterax.testing import random_spd


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


N_Y = 4


def _noises():
    rng = np.random.default_rng(0)
    var = rng.uniform(0.5, 2.0, N_Y)
    u = 0.7 * rng.standard_normal((N_Y, 2))
    cov = random_spd(rng, N_Y, cond=5.0)
    return {
        "scalar": (0.8, 0.8 * np.eye(N_Y)),
        "diagonal": (diagonal_noise(var), np.diag(var)),
        "low_rank": (low_rank_noise(u, var), u @ u.T + np.diag(var)),
        "dense": (jnp.asarray(cov), cov),
    }


@pytest.mark.parametrize("name", ["scalar", "diagonal", "low_rank", "dense"])
def test_sample_covariance_matches_r(name, getkey):
    noise, R = _noises()[name]
    obs = jnp.array([1.0, -2.0, 0.5, 3.0])
    n = 20_000
    D = np.asarray(perturbed_observations(getkey(), obs, noise, n))
    assert D.shape == (n, N_Y)
    eps = D - np.asarray(obs)[None, :]
    # Statistical tolerances (Gaussian sampling theory, n draws):
    #  - mean: sd of each component's sample mean is sqrt(R_ii / n); allow 5 sd.
    #  - covariance: sd of the sample covariance entry (i, j) is
    #    sqrt((R_ii R_jj + R_ij^2) / n) <= sqrt(2 / n) * sqrt(R_ii R_jj); allow 5 sd.
    # 5 sd on each of ~14 scalars gives a false-failure probability < 1e-5.
    sd = np.sqrt(np.diag(R))
    assert np.all(np.abs(eps.mean(0)) < 5 * sd / np.sqrt(n))
    cov = np.cov(eps.T, ddof=1)
    bound = 5 * np.sqrt((np.outer(sd**2, sd**2) + R**2) / n)
    assert np.all(np.abs(cov - R) < bound), (cov, R)


def test_same_key_identical_different_keys_differ(getkey):
    noise, _ = _noises()["low_rank"]
    obs = jnp.zeros(N_Y)
    key = getkey()
    a = perturbed_observations(key, obs, noise, 10)
    b = perturbed_observations(key, obs, noise, 10)
    np.testing.assert_array_equal(a, b)  # bit-identical
    c = perturbed_observations(getkey(), obs, noise, 10)
    assert not np.any(np.asarray(a) == np.asarray(c))
    # jit does not change the draws either.
    jitted = jax.jit(perturbed_observations, static_argnums=(3,))(key, obs, noise, 10)
    np.testing.assert_allclose(jitted, a, rtol=1e-14)


@pytest.mark.parametrize("name", ["diagonal", "dense"])
def test_centered_perturbations_have_zero_mean(name, getkey):
    noise, R = _noises()[name]
    obs = jnp.array([1.0, -2.0, 0.5, 3.0])
    D = perturbed_observations(getkey(), obs, noise, 8, center=True)
    # Exact up to float64 summation round-off of 8 O(1) terms.
    np.testing.assert_allclose(D.mean(axis=0), obs, atol=1e-13)
    uncentered = perturbed_observations(getkey(), obs, noise, 8)
    assert np.max(np.abs(np.asarray(uncentered.mean(0) - obs))) > 1e-3


def test_missing_entries_stay_missing_and_float32(getkey):
    noise, _ = _noises()["dense"]
    obs = jnp.array([1.0, jnp.nan, 0.5, jnp.nan])
    D = np.asarray(perturbed_observations(getkey(), obs, noise, 5))
    assert np.all(np.isnan(D[:, [1, 3]])) and np.all(np.isfinite(D[:, [0, 2]]))
    D32 = perturbed_observations(getkey(), obs.astype(jnp.float32), 0.5, 5)
    assert D32.dtype == jnp.float32


def test_vmap_over_keys_and_grad_through_noise_scale(getkey):
    keys = jax.random.split(getkey(), 3)
    obs = jnp.zeros(N_Y)
    var = jnp.ones(N_Y)
    draws = jax.vmap(lambda k: perturbed_observations(k, obs, var, 4))(keys)
    for i in range(3):
        np.testing.assert_array_equal(draws[i], perturbed_observations(keys[i], obs, var, 4))
    # epsilon = z sqrt(s var): d sum(epsilon) / d s = sum(epsilon) / (2 s) (reparameterised).
    key = getkey()
    grad = jax.grad(lambda s: jnp.sum(perturbed_observations(key, obs, s * var, 4)))(2.0)
    total = jnp.sum(perturbed_observations(key, obs, 2.0 * var, 4))
    np.testing.assert_allclose(grad, total / 4.0, rtol=1e-12)


@pytest.mark.usefixtures("no_runtime_typecheck")
def test_bad_inputs_raise_clear_errors(getkey):
    with pytest.raises(ValueError, match="positive Python int"):
        perturbed_observations(getkey(), jnp.zeros(3), 1.0, 0)
    with pytest.raises(ValueError, match="n_ensemble >= 2"):
        perturbed_observations(getkey(), jnp.zeros(3), 1.0, 1, center=True)
    with pytest.raises(ValueError, match="1-D array"):
        perturbed_observations(getkey(), jnp.zeros((3, 1)), 1.0, 4)
    with pytest.raises(ValueError, match="length 3"):
        perturbed_observations(getkey(), jnp.zeros(3), jnp.ones(2), 4)


def test_singular_dense_noise_raises_instead_of_silent_nan():
    # Regression: the Cholesky root of a singular dense R gave NaN perturbations.
    with pytest.raises(ValueError, match="positive-definite"):
        fxp.perturbed_observations(jax.random.key(0), jnp.zeros(3), np.ones((3, 3)), 2)
