"""Trace-time checks for inverse problems (`_covariance_checks.py`).

Each check accepts valid input unchanged (operators keep their structure and dtype), rejects
each kind of bad input with a message that names the argument and what to pass, and lets
traced values through (they cannot be inspected at trace time).
"""

import jax
import jax.numpy as jnp
import jaxtyping
import lineax as lx
import numpy as np
import pytest

import filterax.primitives as fxp


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


def test_positive_definite_noise_keeps_structure_and_dtype():
    diag = fxp.positive_definite_noise(jnp.array([0.5, 1.0]), 2, dtype=jnp.float32)
    assert fxp.noise_structure(diag) == "diagonal" and diag.as_matrix().dtype == jnp.float32
    dense = fxp.positive_definite_noise(jnp.array([[2.0, 0.5], [0.5, 1.0]]), 2)
    assert fxp.noise_structure(dense) == "dense"
    low = fxp.low_rank_noise(jnp.ones((3, 1)), jnp.full(3, 0.2))
    assert fxp.positive_definite_noise(low, 3) is low
    iso = fxp.positive_definite_noise(0.3, 4)
    np.testing.assert_array_equal(np.diag(np.asarray(iso.as_matrix())), np.full(4, 0.3))


@pytest.mark.parametrize(
    "noise, n, match",
    [
        (jnp.array([1.0, 0.0]), 2, "positive definite; it has the variance 0"),
        (jnp.array([[1.0, 2.0], [2.0, 1.0]]), 2, "smallest eigenvalue is -1"),
        (fxp.low_rank_noise(jnp.ones((2, 1)), jnp.array([1.0, 0.0])), 2, "its diagonal"),
        (fxp.low_rank_noise(jnp.ones((2, 1))), 2, "without a diagonal"),
        (jnp.ones(3), 2, "obs_noise: "),
        (jnp.eye(3), 2, "obs_noise: "),
    ],
)
def test_positive_definite_noise_rejects(noise, n, match):
    with pytest.raises(ValueError, match=match):
        fxp.positive_definite_noise(noise, n, name="obs_noise")


def test_positive_definite_noise_appends_the_hint_and_passes_traced_values(
    no_runtime_typecheck,
):
    with pytest.raises(TypeError, match="obs_noise: .*Pass a scalar"):
        fxp.positive_definite_noise("0.1", 2, name="obs_noise", hint=" Pass a scalar variance.")

    @jax.jit
    def traced(variances):
        # A zero variance under jit cannot be seen at trace time: it passes through.
        return lx.diagonal(fxp.positive_definite_noise(variances, 2))

    np.testing.assert_array_equal(traced(jnp.array([1.0, 0.0])), [1.0, 0.0])


def test_floating_dtype():
    assert fxp.floating_dtype(jnp.zeros(2, jnp.float32)) == jnp.float32
    with pytest.raises(TypeError, match="prior must be a floating-point array; got dtype int32"):
        fxp.floating_dtype(jnp.zeros(2, jnp.int32), "prior")


def test_check_observation_vector():
    fxp.check_observation_vector(jnp.ones(3))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        fxp.check_observation_vector(jnp.ones((3, 1)), "y")
    with pytest.raises(ValueError, match="non-empty 1-D"):
        fxp.check_observation_vector(jnp.ones(0), "y")
    with pytest.raises(ValueError, match="y has non-finite entries"):
        fxp.check_observation_vector(jnp.array([1.0, jnp.nan]), "y")
    fxp.check_observation_vector(jnp.array([1.0, jnp.nan]), finite=False)
    jax.jit(lambda y: fxp.check_observation_vector(y) or y)(jnp.array([jnp.nan]))


def test_check_forward_evals():
    g = fxp.check_forward_evals(np.zeros((4, 3)), 4, 3, dtype=jnp.float32)
    assert g.shape == (4, 3) and g.dtype == jnp.float32
    assert fxp.check_forward_evals(jnp.zeros((4, 7)), 4).shape == (4, 7)
    with pytest.raises(ValueError, match=r"\(N_e, N_y\) = \(4, 3\).*got shape \(4, 2\)"):
        fxp.check_forward_evals(jnp.zeros((4, 2)), 4, 3)
    with pytest.raises(ValueError, match=r"= \(5, N_y\)"):
        fxp.check_forward_evals(jnp.zeros((4, 2)), 5)
    with pytest.raises(ValueError, match="forward_evals must have shape"):
        fxp.check_forward_evals(jnp.zeros(4), 4)


def test_check_prng_key(no_runtime_typecheck):
    fxp.check_prng_key(jax.random.key(0))
    fxp.check_prng_key(jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match=r"init\(key=...\) must be a JAX PRNG key"):
        fxp.check_prng_key(0, "init(key=...)")
    with pytest.raises(TypeError, match="float32"):
        fxp.check_prng_key(jnp.zeros((3, 2), jnp.float32))


class _NoMatrix(lx.FunctionLinearOperator):
    """A matrix-free SPD operator (2 I) that fails loudly if anything materialises it."""

    def as_matrix(self):
        raise AssertionError("a large matrix-free noise operator was materialised")


@fxp.noise_whitening.register(_NoMatrix)
def _whiten_no_matrix(op, dtype=None):
    n = op.in_size()
    return fxp.Whitening.build(fxp.DiagonalRoot(jnp.full(n, jnp.sqrt(2.0), dtype=dtype)))


def _no_matrix(n):
    spec = jax.ShapeDtypeStruct((n,), jnp.float64)
    return _NoMatrix(lambda v: 2.0 * v, spec, tags=(lx.symmetric_tag,))


def test_eager_checks_do_not_materialise_a_large_matrix_free_noise():
    # Past MATRIX_FREE_CHECK_MAX rows the eager checks leave a matrix-free R alone (building
    # its (n, n) matrix to check it would cost O(n^3)); a small one is still materialised and
    # checked. The gain then runs on the operator's registered whitening alone.
    n = 1100
    op = fxp.positive_definite_noise(_no_matrix(n), n)
    assert op.in_size() == n
    X = jax.random.normal(jax.random.key(0), (5, n))
    gain = fxp.kalman_gain(X, X, _no_matrix(n))
    # Woodbury with R = 2 I: K = C^{XY} (C^{YY} + 2 I)^{-1}
    Xn = np.asarray(X)
    A = (Xn - Xn.mean(0)) / 2.0  # anomalies / sqrt(N_e - 1)
    expected = A.T @ A @ np.linalg.inv(A.T @ A + 2.0 * np.eye(n))
    np.testing.assert_allclose(np.asarray(gain), expected, atol=1e-10)
    with pytest.raises(AssertionError, match="materialised"):
        fxp.positive_definite_noise(_no_matrix(8), 8)
