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
