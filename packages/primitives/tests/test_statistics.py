"""Ensemble mean, anomalies, covariance and cross-covariance against numpy references."""

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

from filterax.primitives import (
    LowRankUpdate,
    cross_covariance,
    ensemble_anomalies,
    ensemble_covariance,
    ensemble_mean,
)
from filterax.testing import random_ensemble, tol


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("shape", [(2, 3), (5, 4), (10, 30)])
def test_mean_anomalies_covariance_match_numpy(dtype, shape):
    rng = np.random.default_rng(0)
    X = random_ensemble(rng, *shape)
    Xj = jnp.asarray(X, dtype)
    # Independent references: explicit loops over members for the mean, np.cov for the
    # Bessel-corrected covariance.
    mean_ref = sum(X[j] for j in range(shape[0])) / shape[0]
    anomalies_ref = np.stack([X[j] - mean_ref for j in range(shape[0])])
    cov_ref = np.cov(X.T, ddof=1)
    # Scale-aware tolerance: entries are O(1-10); tol(dtype) covers float32 round-off in sums.
    rtol = tol(dtype)
    np.testing.assert_allclose(ensemble_mean(Xj), mean_ref, rtol=rtol, atol=rtol)
    anomalies = ensemble_anomalies(Xj)
    assert anomalies.dtype == dtype
    np.testing.assert_allclose(anomalies, anomalies_ref, rtol=rtol, atol=rtol)
    # Rows sum to zero (to round-off of a sum of N_e terms of size O(1)).
    np.testing.assert_allclose(anomalies.sum(axis=0), 0.0, atol=10 * rtol)
    normalized = ensemble_anomalies(Xj, normalized=True)
    np.testing.assert_allclose(
        normalized, anomalies_ref / np.sqrt(shape[0] - 1), rtol=rtol, atol=rtol
    )
    cov = ensemble_covariance(Xj)
    assert isinstance(cov, LowRankUpdate)
    assert cov.diagonal is None and cov.rank == shape[0]
    assert cov.as_matrix().dtype == dtype
    np.testing.assert_allclose(cov.as_matrix(), cov_ref, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(ensemble_covariance(Xj, dense=True), cov_ref, rtol=rtol, atol=rtol)
    # The operator acts as the matrix without forming it.
    v = rng.standard_normal(shape[1])
    np.testing.assert_allclose(
        cov.mv(jnp.asarray(v, dtype)), cov_ref @ v, rtol=rtol, atol=10 * rtol
    )


def test_cross_covariance_matches_numpy_double_loop():
    rng = np.random.default_rng(1)
    X = random_ensemble(rng, 7, 3)
    Y = np.sin(X[:, :2]) + X[:, 1:] ** 2  # a nonlinear H(x)
    n_e = X.shape[0]
    xm, ym = X.mean(0), Y.mean(0)
    ref = np.zeros((3, 2))
    for i in range(3):
        for k in range(2):
            ref[i, k] = sum((X[j, i] - xm[i]) * (Y[j, k] - ym[k]) for j in range(n_e)) / (n_e - 1)
    # float64 algebraic identity: 1e-12 absolute is ~1e4 ulp at these O(1) magnitudes.
    np.testing.assert_allclose(cross_covariance(X, Y), ref, rtol=1e-12, atol=1e-12)
    # ... and the block of np.cov of the stacked variables.
    full = np.cov(np.concatenate([X, Y], axis=1).T)
    np.testing.assert_allclose(cross_covariance(X, Y), full[:3, 3:], rtol=1e-12, atol=1e-12)


def test_cross_covariance_equals_pe_ht_for_linear_h():
    rng = np.random.default_rng(2)
    X = random_ensemble(rng, 6, 5)
    H = rng.standard_normal((3, 5))
    Y = X @ H.T
    expected = ensemble_covariance(X, dense=True) @ H.T
    np.testing.assert_allclose(cross_covariance(X, Y), expected, rtol=1e-10, atol=1e-12)


def test_jit_vmap_grad():
    rng = np.random.default_rng(3)
    Xs = jnp.asarray(rng.standard_normal((4, 6, 3)))
    jitted = jax.jit(lambda X: ensemble_covariance(X).as_matrix())
    batched = jax.vmap(lambda X: ensemble_covariance(X, dense=True))(Xs)
    for b in range(4):
        ref = np.cov(np.asarray(Xs[b]).T)
        np.testing.assert_allclose(jitted(Xs[b]), ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(batched[b], ref, rtol=1e-12, atol=1e-12)
    # d tr(P_e) / dX = 2 X' / (N_e - 1), since tr(P_e) = ||X'||_F^2 / (N_e - 1).
    X = Xs[0]
    grad = jax.grad(lambda X: ensemble_covariance(X).trace())(X)
    expected = 2 * (X - X.mean(0, keepdims=True)) / (X.shape[0] - 1)
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.usefixtures("no_runtime_typecheck")
def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"2-D array of shape \(N_e, N_x\)"):
        ensemble_mean(jnp.ones(3))
    with pytest.raises(ValueError, match="at least 2 are needed"):
        ensemble_covariance(jnp.ones((1, 3)))
    with pytest.raises(ValueError, match="Apply the observation operator to every member"):
        cross_covariance(jnp.ones((4, 2)), jnp.ones((5, 2)))
    with pytest.raises(TypeError, match="floating-point"):
        ensemble_anomalies(jnp.ones((3, 2), dtype=jnp.int32))


def test_runtime_typecheck_rejects_wrong_rank():
    # Under the test suite's jaxtyping hook the annotation itself catches the wrong rank.
    with pytest.raises(TypeError):
        ensemble_mean(jnp.ones(3))
