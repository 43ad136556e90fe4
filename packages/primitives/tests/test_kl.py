"""Gaussian KL divergence (with shrinkage) against a dense numpy formula."""

import jax
import jax.numpy as jnp
import jaxtyping
import lineax as lx
import numpy as np
import pytest

from filterax.primitives import (
    LowRankUpdate,
    ensemble_covariance,
    ensemble_gaussian_kl,
    gaussian_kl,
)
from filterax.testing import random_ensemble, random_spd


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


def _kl_reference(m_p, C_p, m_q, C_q):
    """KL(N(m_p, C_p) || N(m_q, C_q)) written directly from the textbook formula."""
    n = len(m_p)
    Cq_inv = np.linalg.inv(C_q)
    delta = m_q - m_p
    return 0.5 * (
        np.trace(Cq_inv @ C_p)
        + delta @ Cq_inv @ delta
        - n
        + np.linalg.slogdet(C_q)[1]
        - np.linalg.slogdet(C_p)[1]
    )


def _shrink_reference(C, gamma, target):
    n = C.shape[0]
    level = np.trace(C) / n if target == "scaled_identity" else 1.0
    return (1 - gamma) * C + gamma * level * np.eye(n)


def test_dense_matches_reference_and_is_zero_for_identical():
    rng = np.random.default_rng(0)
    n = 5
    m_p, m_q = rng.standard_normal(n), rng.standard_normal(n)
    C_p, C_q = random_spd(rng, n, 5.0), random_spd(rng, n, 8.0)
    # float64 closed form on cond <= 8 matrices: 1e-10 relative is generous.
    np.testing.assert_allclose(
        gaussian_kl(m_p, C_p, m_q, C_q), _kl_reference(m_p, C_p, m_q, C_q), rtol=1e-10
    )
    assert abs(float(gaussian_kl(m_p, C_p, m_p, C_p))) < 1e-12
    # KL >= 0 on random pairs, and it is not symmetric.
    for seed in range(5):
        r = np.random.default_rng(seed + 10)
        kl = gaussian_kl(r.standard_normal(n), random_spd(r, n), r.standard_normal(n), C_q)
        assert kl > 0
    assert not np.isclose(gaussian_kl(m_p, C_p, m_q, C_q), gaussian_kl(m_q, C_q, m_p, C_p))
    # Analytic value: KL(N(0, I) || N(1, 2I)) in 2-D = log 2.
    np.testing.assert_allclose(
        gaussian_kl(jnp.zeros(2), jnp.eye(2), jnp.ones(2), 2 * jnp.eye(2)), np.log(2), rtol=1e-14
    )


@pytest.mark.parametrize("target", ["scaled_identity", "identity"])
def test_shrinkage_matches_reference(target):
    rng = np.random.default_rng(1)
    n = 6
    m_p, m_q = rng.standard_normal(n), rng.standard_normal(n)
    C_p, C_q = random_spd(rng, n), random_spd(rng, n)
    gamma = 0.1
    ref = _kl_reference(
        m_p, _shrink_reference(C_p, gamma, target), m_q, _shrink_reference(C_q, gamma, target)
    )
    kl = gaussian_kl(m_p, C_p, m_q, C_q, shrinkage=gamma, shrinkage_target=target)
    np.testing.assert_allclose(kl, ref, rtol=1e-10)


@pytest.mark.parametrize("target", ["scaled_identity", "identity"])
def test_low_rank_path_matches_dense_for_rank_deficient_ensembles(target):
    # N_e = 5 < n = 12: the ensemble covariances are singular, and only shrinkage makes the
    # KL finite (the situation of Bach et al. 2025, section 3.5).
    rng = np.random.default_rng(2)
    X_p = random_ensemble(rng, 5, 12)
    X_q = random_ensemble(rng, 7, 12)
    gamma = 0.1
    C_p = _shrink_reference(np.cov(X_p.T), gamma, target)
    C_q = _shrink_reference(np.cov(X_q.T), gamma, target)
    ref = _kl_reference(X_p.mean(0), C_p, X_q.mean(0), C_q)
    kl = ensemble_gaussian_kl(X_p, X_q, shrinkage=gamma, shrinkage_target=target)
    # The Woodbury route differs from the dense inverse only by round-off (cond ~ 1e2-1e3).
    np.testing.assert_allclose(kl, ref, rtol=1e-9)
    kl_ops = gaussian_kl(
        X_p.mean(0),
        ensemble_covariance(X_p),
        X_q.mean(0),
        ensemble_covariance(X_q),
        shrinkage=gamma,
        shrinkage_target=target,
    )
    np.testing.assert_allclose(kl_ops, ref, rtol=1e-9)
    np.testing.assert_allclose(
        ensemble_gaussian_kl(X_p, X_p, shrinkage=gamma, shrinkage_target=target), 0.0, atol=1e-10
    )


def test_operator_inputs_agree_with_arrays():
    rng = np.random.default_rng(3)
    n = 5
    m_p, m_q = rng.standard_normal(n), rng.standard_normal(n)
    u, d = rng.standard_normal((n, 2)), rng.uniform(0.5, 1.5, n)
    var = rng.uniform(0.5, 2.0, n)
    dense_q = random_spd(rng, n)
    cases = [
        (LowRankUpdate(u, d), u @ u.T + np.diag(d)),
        (lx.DiagonalLinearOperator(jnp.asarray(var)), np.diag(var)),
        (lx.MatrixLinearOperator(jnp.asarray(dense_q)), dense_q),
    ]
    for op_p, C_p in cases:
        for op_q, C_q in cases:
            np.testing.assert_allclose(
                gaussian_kl(m_p, op_p, m_q, op_q), _kl_reference(m_p, C_p, m_q, C_q), rtol=1e-10
            )


def test_jit_and_gradient_in_shrinkage():
    rng = np.random.default_rng(4)
    X_p = jnp.asarray(random_ensemble(rng, 5, 8))
    X_q = jnp.asarray(random_ensemble(rng, 5, 8))

    def loss(gamma):
        return ensemble_gaussian_kl(X_p, X_q, shrinkage=gamma)

    # jit-compiled once (eager autodiff would compile every primitive separately: slow).
    jit_loss = jax.jit(loss)
    np.testing.assert_allclose(jit_loss(0.2), loss(0.2), rtol=1e-12)
    grad = jax.jit(jax.grad(loss))(0.2)
    h = 1e-5  # central difference, O(h^2) truncation ~ 1e-10
    fd = (jit_loss(0.2 + h) - jit_loss(0.2 - h)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6)
    gx = jax.jit(jax.grad(lambda X: ensemble_gaussian_kl(X, X_q, shrinkage=0.1)))(X_p)
    assert np.all(np.isfinite(gx))


def test_float32():
    rng = np.random.default_rng(5)
    X_p = random_ensemble(rng, 5, 8)
    X_q = random_ensemble(rng, 5, 8)
    kl64 = ensemble_gaussian_kl(X_p, X_q, shrinkage=0.3)
    kl32 = ensemble_gaussian_kl(
        jnp.asarray(X_p, jnp.float32), jnp.asarray(X_q, jnp.float32), shrinkage=0.3
    )
    assert kl32.dtype == jnp.float32
    # float32 round-off (6e-8) amplified by cond ~ 1e2 and by the cancellation of the O(n)
    # terms of the sum: 1e-3 relative on an O(10) divergence.
    np.testing.assert_allclose(kl32, kl64, rtol=1e-3)


@pytest.mark.usefixtures("no_runtime_typecheck")
def test_bad_inputs_raise_clear_errors():
    eye = jnp.eye(3)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        gaussian_kl(jnp.zeros(3), eye, jnp.zeros(3), eye, shrinkage=1.5)
    with pytest.raises(ValueError, match="shrinkage_target"):
        gaussian_kl(jnp.zeros(3), eye, jnp.zeros(3), eye, shrinkage_target="diag")
    with pytest.raises(ValueError, match=r"\(3, 3\) covariance"):
        gaussian_kl(jnp.zeros(3), jnp.eye(2), jnp.zeros(3), eye)
    with pytest.raises(ValueError, match="length 3"):
        gaussian_kl(jnp.zeros(3), eye, jnp.zeros(4), eye)
    X = jnp.asarray(random_ensemble(np.random.default_rng(0), 3, 6))
    with pytest.raises(ValueError, match="Pass shrinkage > 0"):
        ensemble_gaussian_kl(X, X, shrinkage=0.0)
    # Regression: N_e = n gives k = n factor columns but rank n - 1; still singular.
    X_square = jnp.asarray(random_ensemble(np.random.default_rng(1), 6, 6))
    with pytest.raises(ValueError, match="Pass shrinkage > 0"):
        ensemble_gaussian_kl(X_square, X_square, shrinkage=0.0)
    with pytest.raises(ValueError, match="Pass shrinkage > 0"):
        gaussian_kl(jnp.zeros(6), LowRankUpdate(jnp.ones((6, 2))), jnp.zeros(6), jnp.eye(6))
    with pytest.raises(ValueError, match="same space"):
        ensemble_gaussian_kl(X, X[:, :4], shrinkage=0.1)
