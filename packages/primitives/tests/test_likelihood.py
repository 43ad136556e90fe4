"""Innovation statistics and log-likelihood against scipy.stats.multivariate_normal."""

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
import scipy.stats

from filterax.primitives import (
    InnovationStatistics,
    diagonal_noise,
    innovation_statistics,
    log_likelihood,
    low_rank_noise,
)
from filterax.testing import random_ensemble, random_spd, tol


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


N_E = 6


def _noise(structure, n_y, rng):
    var = rng.uniform(0.3, 1.5, n_y)
    if structure == "scalar":
        return 0.8, 0.8 * np.eye(n_y)
    if structure == "diagonal":
        return diagonal_noise(var), np.diag(var)
    if structure == "low_rank":
        u = 0.5 * rng.standard_normal((n_y, 2))
        return low_rank_noise(u, var), u @ u.T + np.diag(var)
    cov = random_spd(rng, n_y, cond=10.0)
    return jnp.asarray(cov), cov


def _reference(Y, obs, R):
    """scipy's log N(obs; mean(Y), cov(Y) + R) on the observed entries."""
    keep = ~np.isnan(obs)
    mean = Y.mean(axis=0)[keep]
    S = np.atleast_2d(np.cov(Y[:, keep].T, ddof=1)) + R[np.ix_(keep, keep)]
    v = obs[keep] - mean
    return (
        scipy.stats.multivariate_normal(mean, S).logpdf(obs[keep]),
        v @ np.linalg.solve(S, v),
        np.linalg.slogdet(S)[1],
    )


STRUCTURES = ["scalar", "diagonal", "low_rank", "dense"]


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("n_y", [3, N_E, 10])
def test_matches_scipy_logpdf(structure, n_y):
    rng = np.random.default_rng(n_y)
    Y = random_ensemble(rng, N_E, n_y)
    obs = rng.standard_normal(n_y)
    noise, R = _noise(structure, n_y, rng)
    ll_ref, maha_ref, logdet_ref = _reference(Y, obs, R)
    stats = innovation_statistics(Y, obs, noise)
    assert isinstance(stats, InnovationStatistics)
    # float64 identities on a cond <= ~1e3 S: 1e-10 relative leaves ample headroom.
    np.testing.assert_allclose(stats.log_likelihood, ll_ref, rtol=1e-10)
    np.testing.assert_allclose(stats.mahalanobis, maha_ref, rtol=1e-10)
    np.testing.assert_allclose(stats.logdet, logdet_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(stats.innovation, obs - Y.mean(0), rtol=1e-13)
    assert int(stats.n_obs) == n_y
    np.testing.assert_allclose(log_likelihood(Y, obs, noise), ll_ref, rtol=1e-10)
    S = stats.innovation_covariance.as_matrix()
    np.testing.assert_allclose(S, np.cov(Y.T) + R, rtol=1e-12, atol=1e-12)
    # The whitened innovation: ||w||^2 = v^T S^{-1} v always.
    w = stats.normalized_innovation
    np.testing.assert_allclose(np.sum(np.asarray(w) ** 2), maha_ref, rtol=1e-10)


def test_normalized_innovation_is_symmetric_inverse_root_for_isotropic_noise():
    rng = np.random.default_rng(11)
    Y = random_ensemble(rng, N_E, 4)
    obs = rng.standard_normal(4)
    stats = innovation_statistics(Y, obs, 0.5)
    S = np.cov(Y.T) + 0.5 * np.eye(4)
    eigvals, eigvecs = np.linalg.eigh(S)
    inv_root = eigvecs @ np.diag(eigvals**-0.5) @ eigvecs.T
    np.testing.assert_allclose(stats.normalized_innovation, inv_root @ (obs - Y.mean(0)), rtol=1e-9)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_missing_entries_equal_the_observed_subset(structure):
    rng = np.random.default_rng(5)
    n_y = 7
    Y = random_ensemble(rng, N_E, n_y)
    obs = rng.standard_normal(n_y)
    obs[[1, 4, 5]] = np.nan
    noise, R = _noise(structure, n_y, rng)
    ll_ref, maha_ref, logdet_ref = _reference(Y, obs, R)
    stats = innovation_statistics(Y, jnp.asarray(obs), noise)
    assert int(stats.n_obs) == 4
    np.testing.assert_allclose(stats.log_likelihood, ll_ref, rtol=1e-10)
    np.testing.assert_allclose(stats.mahalanobis, maha_ref, rtol=1e-10)
    np.testing.assert_allclose(stats.logdet, logdet_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(np.asarray(stats.innovation)[[1, 4, 5]], 0.0)
    np.testing.assert_array_equal(np.asarray(stats.normalized_innovation)[[1, 4, 5]], 0.0)
    for leaf in jax.tree.leaves(stats):
        assert np.all(np.isfinite(leaf))


def test_gradients_are_finite_and_match_finite_differences():
    rng = np.random.default_rng(6)
    n_y = 9  # N_y > N_e: W^T W has repeated eigenvalues; gradients must still be finite
    Y = jnp.asarray(random_ensemble(rng, N_E, n_y))
    obs = jnp.asarray(rng.standard_normal(n_y)).at[2].set(jnp.nan)
    var = jnp.asarray(rng.uniform(0.5, 1.5, n_y))
    u = jnp.asarray(0.3 * rng.standard_normal((n_y, 2)))
    cov = jnp.asarray(random_spd(rng, n_y))
    noises = {
        "diagonal": lambda s: s * var,
        "low_rank": lambda s: low_rank_noise(jnp.sqrt(s) * u, s * var),
        "dense": lambda s: s * cov,
    }
    h = 1e-5  # central differences: O(h^2) ~ 1e-10 truncation, O(eps/h) ~ 1e-11 round-off
    for make in noises.values():
        # One jit-compiled value-and-gradient per structure (eager autodiff is much slower).
        value_and_grad = jax.jit(
            jax.value_and_grad(
                lambda s, Y, o, make=make: log_likelihood(Y, o, make(s)), argnums=(0, 1, 2)
            )
        )
        _, (grad, gy, gobs) = value_and_grad(1.3, Y, obs)
        fd = (value_and_grad(1.3 + h, Y, obs)[0] - value_and_grad(1.3 - h, Y, obs)[0]) / (2 * h)
        assert np.isfinite(grad)
        np.testing.assert_allclose(grad, fd, rtol=1e-6)
        assert np.all(np.isfinite(gy)) and np.all(np.isfinite(gobs))
        assert gobs[2] == 0.0  # a missing entry carries no information
        # d log p / d y = -S^{-1} v on the observed entries (tutorial 1.6's sanity check).
        stats = jax.jit(lambda make=make: innovation_statistics(Y, obs, make(1.3)))()
        keep = np.arange(n_y) != 2
        S = np.asarray(stats.innovation_covariance.as_matrix())[np.ix_(keep, keep)]
        expected = -np.linalg.solve(S, np.asarray(stats.innovation)[keep])
        np.testing.assert_allclose(np.asarray(gobs)[keep], expected, rtol=1e-9)
    # The whole statistics module differentiates without NaN (normalized_innovation is
    # stop-gradient'ed, so its eigendecomposition cannot poison anything).
    g = jax.jit(jax.grad(lambda s: innovation_statistics(Y, obs, s * var).log_likelihood))(1.0)
    assert np.isfinite(g)


def test_jit_vmap_and_float32():
    rng = np.random.default_rng(8)
    Y = jnp.asarray(random_ensemble(rng, N_E, 4))
    obs = jnp.asarray(rng.standard_normal(4))
    var = jnp.asarray(rng.uniform(0.5, 1.5, 4))
    eager = log_likelihood(Y, obs, var)
    np.testing.assert_allclose(jax.jit(log_likelihood)(Y, obs, var), eager, rtol=1e-13)
    stats = jax.jit(innovation_statistics)(Y, obs, diagonal_noise(var))
    np.testing.assert_allclose(stats.log_likelihood, eager, rtol=1e-13)
    obs_batch = obs[None, :] + jnp.arange(3.0)[:, None]
    batched = jax.vmap(lambda o: log_likelihood(Y, o, var))(obs_batch)
    for i in range(3):
        ref, _, _ = _reference(np.asarray(Y), np.asarray(obs_batch[i]), np.diag(np.asarray(var)))
        np.testing.assert_allclose(batched[i], ref, rtol=1e-10)
    ll32 = log_likelihood(Y.astype(jnp.float32), obs.astype(jnp.float32), var.astype(jnp.float32))
    assert ll32.dtype == jnp.float32
    # float32 log-likelihood of O(10) magnitude: tol(float32) = 1e-4 relative.
    np.testing.assert_allclose(ll32, eager, rtol=tol(jnp.float32))


@pytest.mark.usefixtures("no_runtime_typecheck")
def test_bad_inputs_raise_clear_errors():
    Y = jnp.ones((4, 3)) + jnp.arange(4.0)[:, None]
    with pytest.raises(ValueError, match="must have length 3"):
        log_likelihood(Y, jnp.zeros(2), 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        log_likelihood(jnp.ones((1, 3)), jnp.zeros(3), 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        log_likelihood(Y, jnp.zeros(3), jnp.array([1.0, -1.0, 1.0]))
