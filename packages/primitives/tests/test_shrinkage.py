"""Ledoit-Wolf shrinkage vs numpy transcriptions of scikit-learn and of the paper."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.primitives._shrinkage import ledoit_wolf_shrinkage
from filterax.testing import tol

# Eager JAX compiles every primitive separately; checking the jitted function costs one XLA
# compile per shape instead of dozens and keeps the suite fast. Error tests call the raw one.
ledoit_wolf_j = eqx.filter_jit(ledoit_wolf_shrinkage)


def sklearn_ledoit_wolf(X, block_size=3):
    """Numpy transcription of sklearn.covariance.ledoit_wolf (assume_centered=False).

    Kept in sklearn's blocked form (with a small block size so the blocking is exercised);
    sklearn itself is not a dependency.
    """
    X = np.asarray(X, dtype=float)
    n_samples, n_features = X.shape
    X = X - X.mean(0)
    if n_features == 1:
        return np.atleast_2d((X**2).mean()), 0.0
    n_splits = int(n_features / block_size)
    X2 = X**2
    emp_cov_trace = np.sum(X2, axis=0) / n_samples
    mu = np.sum(emp_cov_trace) / n_features
    beta_, delta_ = 0.0, 0.0
    for i in range(n_splits):
        for j in range(n_splits):
            rows = slice(block_size * i, block_size * (i + 1))
            cols = slice(block_size * j, block_size * (j + 1))
            beta_ += np.sum(np.dot(X2.T[rows], X2[:, cols]))
            delta_ += np.sum(np.dot(X.T[rows], X[:, cols]) ** 2)
        rows = slice(block_size * i, block_size * (i + 1))
        beta_ += np.sum(np.dot(X2.T[rows], X2[:, block_size * n_splits :]))
        delta_ += np.sum(np.dot(X.T[rows], X[:, block_size * n_splits :]) ** 2)
    for j in range(n_splits):
        cols = slice(block_size * j, block_size * (j + 1))
        beta_ += np.sum(np.dot(X2.T[block_size * n_splits :], X2[:, cols]))
        delta_ += np.sum(np.dot(X.T[block_size * n_splits :], X[:, cols]) ** 2)
    delta_ += np.sum(np.dot(X.T[block_size * n_splits :], X[:, block_size * n_splits :]) ** 2)
    delta_ /= n_samples**2
    beta_ += np.sum(np.dot(X2.T[block_size * n_splits :], X2[:, block_size * n_splits :]))
    beta = 1.0 / (n_features * n_samples) * (beta_ / n_samples - delta_)
    delta = delta_ - 2.0 * mu * emp_cov_trace.sum() + n_features * mu**2
    delta /= n_features
    beta = min(beta, delta)
    shrinkage = 0 if beta == 0 else beta / delta
    emp_cov = X.T @ X / n_samples
    mu = np.trace(emp_cov) / n_features
    shrunk = (1.0 - shrinkage) * emp_cov
    shrunk.flat[:: n_features + 1] += shrinkage * mu
    return shrunk, shrinkage


def paper_ledoit_wolf(X):
    """Ledoit & Wolf (2004) in the paper's notation: m, d^2, b-bar^2 with the <A,B> = tr(AB')/p
    norm, from per-sample outer products."""
    X = np.asarray(X, dtype=float)
    n, p = X.shape
    Xc = X - X.mean(0)
    S = Xc.T @ Xc / n
    m = np.trace(S) / p
    d2 = np.sum((S - m * np.eye(p)) ** 2) / p
    b2_bar = sum(np.sum((np.outer(x, x) - S) ** 2) / p for x in Xc) / n**2
    b2 = min(b2_bar, d2)
    rho = b2 / d2
    return (1 - rho) * S + rho * m * np.eye(p), rho


@pytest.mark.parametrize(("n_e", "n_x"), [(10, 7), (30, 4), (5, 12), (40, 2)])
def test_matches_sklearn_formula(n_e, n_x):
    rng = np.random.default_rng(n_e * 100 + n_x)
    # Correlated data with unequal variances so that the intensity is strictly inside (0, 1)
    # for most shapes.
    X = rng.standard_normal((n_e, n_x)) @ rng.standard_normal((n_x, n_x)) + 3.0
    cov, rho = ledoit_wolf_j(jnp.asarray(X))
    cov_ref, rho_ref = sklearn_ledoit_wolf(X)
    # Sums of O(N p^2) products of O(1) numbers: float64 agrees to ~1e-13 relative.
    np.testing.assert_allclose(rho, rho_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov, cov_ref, rtol=1e-10, atol=1e-12)
    cov_paper, rho_paper = paper_ledoit_wolf(X)
    np.testing.assert_allclose(rho, rho_paper, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov, cov_paper, rtol=1e-10, atol=1e-12)


def test_sklearn_documented_example():
    # The LedoitWolf docstring example of scikit-learn, with its printed 4-digit result.
    real_cov = np.array([[0.4, 0.2], [0.2, 0.8]])
    np.random.seed(0)  # noqa: NPY002  (reproducing sklearn's legacy-RNG example)
    X = np.random.multivariate_normal(mean=[0, 0], cov=real_cov, size=50)  # noqa: NPY002
    cov, _ = ledoit_wolf_j(jnp.asarray(X))
    np.testing.assert_allclose(cov, [[0.4406, 0.1616], [0.1616, 0.8022]], atol=1e-4)


def test_intensity_in_unit_interval_and_well_conditioned():
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.standard_normal((8, 30)))  # N_e << N_x: sample covariance is rank 7
    cov, rho = ledoit_wolf_j(X)
    assert 0.0 < float(rho) <= 1.0
    eig = np.linalg.eigvalsh(np.asarray(cov))
    # The shrunk estimate is positive definite (min eigenvalue >= rho * mu > 0).
    assert eig.min() > 0.0
    np.testing.assert_allclose(np.trace(cov), np.trace(np.cov(np.asarray(X), rowvar=False, ddof=0)))


def test_edge_cases():
    # One feature: nothing to shrink towards; sklearn returns mean(X_c^2) and 0.
    X = jnp.array([[1.0], [2.0], [4.0]])
    cov, rho = ledoit_wolf_j(X)
    assert float(rho) == 0.0
    np.testing.assert_allclose(cov, [[np.var([1.0, 2.0, 4.0])]], rtol=1e-12)
    # S already a multiple of I (delta = 0): intensity 0, no NaN.
    X = jnp.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    cov, rho = ledoit_wolf_j(X)
    assert float(rho) == 0.0
    np.testing.assert_allclose(cov, 0.5 * np.eye(2), atol=1e-15)


def test_ddof_rescales_only():
    rng = np.random.default_rng(1)
    X = jnp.asarray(rng.standard_normal((6, 4)))
    cov0, rho0 = ledoit_wolf_j(X)
    cov1, rho1 = ledoit_wolf_j(X, ddof=1)
    assert float(rho0) == float(rho1)
    np.testing.assert_allclose(cov1, cov0 * 6 / 5, rtol=1e-14)
    with pytest.raises(ValueError, match="ddof"):
        ledoit_wolf_shrinkage(X, ddof=2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_jit_grad_and_dtype(dtype):
    rng = np.random.default_rng(2)
    X = jnp.asarray(rng.standard_normal((10, 5)), dtype=dtype)
    cov, rho = jax.jit(ledoit_wolf_shrinkage)(X)
    assert cov.dtype == dtype and rho.dtype == dtype
    cov_ref, rho_ref = sklearn_ledoit_wolf(np.asarray(X, dtype=float))
    np.testing.assert_allclose(cov, cov_ref, rtol=tol(dtype), atol=tol(dtype))
    g = jax.jit(jax.grad(lambda x: jnp.sum(ledoit_wolf_shrinkage(x)[0] ** 2)))(X)
    assert np.all(np.isfinite(g))


def test_bad_input():
    with pytest.raises((ValueError, TypeError)):
        ledoit_wolf_shrinkage(jnp.ones(5))
    with pytest.raises(ValueError, match="at least 2"):
        ledoit_wolf_shrinkage(jnp.ones((1, 5)))
