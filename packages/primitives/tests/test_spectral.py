"""The one gradient-safe spectral function and its named instances.

Values against numpy eigendecompositions (1e-12: float64 round-off on O(1) symmetric matrices
of size <= 8 is ~1e-14), first derivatives (JVP and VJP) against central finite differences,
finite at repeated eigenvalues where a plain `eigh` derivative is NaN.
"""

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

import filterax.primitives as fxp
from filterax.primitives import (
    inverse_sqrt_one_plus,
    pinv_psd,
    sqrt_psd,
    symmetric_matrix_function,
)

VALUE_TOL = 1e-12


def _numpy_function(kind, m, rcond=None):
    lam, u = np.linalg.eigh(0.5 * (m + m.T))
    if kind == "inv_sqrt_one_plus":
        f = 1.0 / np.sqrt(1.0 + np.maximum(lam, 0.0))
    elif kind == "inv_sqrt_one_plus_push":
        a = np.sqrt(1.0 + np.maximum(lam, 0.0))
        f = -1.0 / (a * (1.0 + a))
    elif kind == "sqrt":
        f = np.sqrt(np.maximum(lam, 0.0))
    else:
        rcond = fxp.default_pinv_rcond(len(m), np.float64) if rcond is None else rcond
        keep = lam > rcond * lam.max()
        f = np.where(keep, 1.0 / np.where(keep, lam, 1.0), 0.0)
    return (u * f) @ u.T


def _gram(seed, n, rank):
    y = np.random.default_rng(seed).standard_normal((n, max(rank, 1))) * (rank > 0)
    return y @ y.T


KINDS = ["inv_sqrt_one_plus", "inv_sqrt_one_plus_push", "sqrt", "pinv"]
INSTANCES = {
    "inv_sqrt_one_plus": inverse_sqrt_one_plus,
    "sqrt": sqrt_psd,
    "pinv": pinv_psd,
}


@pytest.mark.parametrize("rank", [0, 2, 6])
@pytest.mark.parametrize("kind", KINDS)
def test_values_match_numpy(kind, rank):
    m = _gram(rank, 6, rank) + (np.eye(6) if kind == "pinv" and rank == 0 else 0.0)
    got = symmetric_matrix_function(jnp.asarray(m), kind)
    np.testing.assert_allclose(got, _numpy_function(kind, m), rtol=0, atol=VALUE_TOL)
    if kind in INSTANCES:
        np.testing.assert_array_equal(INSTANCES[kind](jnp.asarray(m)), got)


def test_identities_of_the_instances():
    m = _gram(1, 6, 3)
    t = np.asarray(inverse_sqrt_one_plus(jnp.asarray(m)))
    np.testing.assert_allclose(t @ t @ (np.eye(6) + m), np.eye(6), atol=1e-12)
    r = np.asarray(sqrt_psd(jnp.asarray(m)))
    np.testing.assert_allclose(r @ r, m, atol=1e-12)
    p = np.asarray(pinv_psd(jnp.asarray(m)))
    np.testing.assert_allclose(m @ p @ m, m, atol=1e-12)
    np.testing.assert_allclose(p @ m @ p, p, atol=1e-12)
    # The push-through form: (I + S S^T)^{-1/2} = I + S g(S^T S) S^T for any S.
    s = np.random.default_rng(2).standard_normal((8, 3))
    g = np.asarray(symmetric_matrix_function(jnp.asarray(s.T @ s), "inv_sqrt_one_plus_push"))
    big = np.asarray(inverse_sqrt_one_plus(jnp.asarray(s @ s.T)))
    np.testing.assert_allclose(np.eye(8) + s @ g @ s.T, big, atol=1e-12)


def test_centred_gram_preserves_the_ones_vector():
    y = np.random.default_rng(3).standard_normal((8, 3))
    y = y - y.mean(axis=0)
    t = inverse_sqrt_one_plus(jnp.asarray(y @ y.T))
    np.testing.assert_allclose(t @ np.ones(8), np.ones(8), atol=1e-12)


def _direction(seed, n):
    d = np.random.default_rng(seed).standard_normal((n, n))
    return jnp.asarray(d + d.T)


@pytest.mark.parametrize("rank", [0, 2, 5])
@pytest.mark.parametrize("kind", KINDS)
def test_jvp_and_vjp_match_finite_differences_at_repeated_eigenvalues(kind, rank):
    # Base point with repeated eigenvalues (rank < 5: a repeated 0; rank 0: all equal). The
    # square root and the pseudo-inverse are not differentiable where an eigenvalue is 0 (the
    # square root's derivative is floored, the pseudo-inverse changes rank), so they are
    # checked at (1 + base): the same repeated eigenvalues, shifted away from 0.
    base = _gram(10 + rank, 5, rank)
    if kind in ("sqrt", "pinv"):
        base = base + np.eye(5)
    m = jnp.asarray(base)
    direction = _direction(20 + rank, 5)
    weights = jnp.asarray(np.random.default_rng(30 + rank).standard_normal((5, 5)))

    def f(t):
        return symmetric_matrix_function(m + t * direction, kind)

    _, jvp = jax.jvp(f, (0.0,), (1.0,))
    h = 1e-6
    fd = (f(h) - f(-h)) / (2 * h)
    assert np.all(np.isfinite(np.asarray(jvp)))
    # Central differences with h = 1e-6: truncation ~h^2 |f'''| ~1e-12, round-off ~eps/h ~1e-10.
    np.testing.assert_allclose(jvp, fd, rtol=1e-6, atol=1e-8)

    def loss(t):
        return jnp.sum(weights * f(t))

    grad = jax.grad(loss)(0.0)
    assert np.isfinite(grad)
    np.testing.assert_allclose(grad, (loss(h) - loss(-h)) / (2 * h), rtol=1e-6, atol=1e-8)


def test_plain_eigh_derivative_is_nan_where_this_one_is_finite():
    # The reason for the custom rule: M(t) = (t E)(t E)^T is 0 at t = 0 (all eigenvalues
    # equal), where eigh's derivative is NaN.
    e = jnp.asarray(np.random.default_rng(0).standard_normal((4, 2)))

    def plain(t):
        lam, u = jnp.linalg.eigh((t * e) @ (t * e).T)
        return jnp.sum((u / jnp.sqrt(1.0 + lam)[None, :]) @ u.T)

    def safe(t):
        return jnp.sum(inverse_sqrt_one_plus((t * e) @ (t * e).T))

    assert not np.isfinite(jax.grad(plain)(0.0))
    assert np.isfinite(jax.grad(safe)(0.0))


def test_newton_value_matches_eigh_and_shares_its_derivative():
    m = jnp.asarray(_gram(4, 7, 3))
    newton = symmetric_matrix_function(m, "inv_sqrt_one_plus", "newton")
    eigh = symmetric_matrix_function(m, "inv_sqrt_one_plus", "eigh")
    np.testing.assert_allclose(newton, eigh, atol=1e-13)
    direction = _direction(5, 7)
    for method in ("newton", "eigh"):
        _, jvp = jax.jvp(
            lambda t, method=method: inverse_sqrt_one_plus(m + t * direction, method),
            (0.0,),
            (1.0,),
        )
        assert np.all(np.isfinite(np.asarray(jvp)))
    jvps = [
        jax.jvp(lambda t, mt=mt: inverse_sqrt_one_plus(m + t * direction, mt), (0.0,), (1.0,))[1]
        for mt in ("newton", "eigh")
    ]
    np.testing.assert_allclose(jvps[0], jvps[1], atol=1e-13)


def test_pinv_threshold_and_zero_matrix():
    m = jnp.diag(jnp.array([4.0, 1e-20, 0.0]))
    np.testing.assert_allclose(pinv_psd(m), np.diag([0.25, 0.0, 0.0]), atol=VALUE_TOL)
    np.testing.assert_allclose(pinv_psd(m, rcond=1e-30), np.diag([0.25, 1e20, 0.0]), rtol=1e-12)
    np.testing.assert_array_equal(pinv_psd(jnp.zeros((3, 3))), np.zeros((3, 3)))


def test_jit_and_vmap():
    ms = jnp.stack([jnp.eye(3), 2 * jnp.eye(3)])
    out = jax.jit(jax.vmap(inverse_sqrt_one_plus))(ms)
    np.testing.assert_allclose(out[1], np.eye(3) / np.sqrt(3.0), rtol=1e-12)
    out = jax.vmap(lambda m: symmetric_matrix_function(m, "sqrt"))(ms)
    np.testing.assert_allclose(out[1], np.sqrt(2.0) * np.eye(3), rtol=1e-12)


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


@pytest.mark.usefixtures("no_runtime_typecheck")
def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="square"):
        inverse_sqrt_one_plus(jnp.ones((2, 3)))
    with pytest.raises(TypeError, match="floating"):
        inverse_sqrt_one_plus(jnp.eye(2, dtype=jnp.int32))
    with pytest.raises(ValueError, match="kind"):
        symmetric_matrix_function(jnp.eye(2), "inv_sqrt")
    with pytest.raises(ValueError, match="method='newton' supports"):
        symmetric_matrix_function(jnp.eye(2), "sqrt", "newton")
    with pytest.raises(ValueError, match="rcond"):
        symmetric_matrix_function(jnp.eye(2), "sqrt", rcond=1e-3)
