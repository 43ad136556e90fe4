"""LowRankUpdate: a lineax operator whose Woodbury algebra matches dense numpy."""

import jax
import jax.numpy as jnp
import jaxtyping
import lineax as lx
import numpy as np
import pytest

from filterax.primitives import LowRankUpdate
from filterax.testing import tol


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


def _problem(n, k, seed=0):
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n, k))
    d = rng.uniform(0.5, 2.0, n)
    return u, d, u @ u.T + np.diag(d), rng


# (n, k): k < n (the usual ensemble case), k == n and k > n (more members than obs).
SHAPES = [(8, 3), (5, 5), (4, 9)]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("n,k", SHAPES)
def test_matches_dense_numpy(n, k, dtype):
    u, d, dense, rng = _problem(n, k)
    op = LowRankUpdate(jnp.asarray(u, dtype), jnp.asarray(d, dtype))
    b = rng.standard_normal(n)
    B = rng.standard_normal((n, 3))
    # The dense matrix has condition number <= ~(k * 4 + 2) / 0.5 ~ 100, so float32 solves
    # lose ~2 digits: tol(float32) = 1e-4 relative is still ~10x above that.
    rtol = tol(dtype) * (10 if dtype == jnp.float32 else 1)
    assert op.in_structure() == jax.ShapeDtypeStruct((n,), dtype)
    assert op.rank == k
    np.testing.assert_allclose(op.as_matrix(), dense, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(op.mv(jnp.asarray(b, dtype)), dense @ b, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(op.logdet(), np.linalg.slogdet(dense)[1], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(
        op.solve(jnp.asarray(b, dtype)), np.linalg.solve(dense, b), rtol=rtol, atol=rtol
    )
    np.testing.assert_allclose(
        op.solve(jnp.asarray(B, dtype)), np.linalg.solve(dense, B), rtol=rtol, atol=rtol
    )
    np.testing.assert_allclose(op.trace(), np.trace(dense), rtol=rtol)


def test_no_diagonal_is_the_pure_low_rank_product():
    u, _, _, _ = _problem(6, 2)
    op = LowRankUpdate(u)
    np.testing.assert_allclose(op.as_matrix(), u @ u.T, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(lx.diagonal(op), np.sum(u**2, axis=1), rtol=1e-14)


def test_lineax_registrations_and_linear_solve():
    u, d, dense, rng = _problem(7, 3)
    op = LowRankUpdate(u, d)
    assert lx.is_symmetric(op) and lx.is_positive_semidefinite(op)
    assert not lx.is_negative_semidefinite(op)
    assert not lx.is_diagonal(op) and not lx.is_tridiagonal(op)
    assert not lx.is_lower_triangular(op) and not lx.is_upper_triangular(op)
    assert not lx.has_unit_diagonal(op)
    assert op.transpose() is op and op.T is op
    assert lx.linearise(op) is op and lx.materialise(op) is op
    assert isinstance(lx.conj(op), LowRankUpdate)
    np.testing.assert_allclose(lx.diagonal(op), np.diag(dense), rtol=1e-13)
    main, lower, upper = lx.tridiagonal(op)
    np.testing.assert_allclose(main, np.diag(dense), rtol=1e-13)
    np.testing.assert_allclose(lower, np.diag(dense, -1), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(upper, np.diag(dense, 1), rtol=1e-13, atol=1e-14)
    # A rank-0 update is structurally diagonal.
    assert lx.is_diagonal(LowRankUpdate(np.zeros((3, 0)), np.ones(3)))

    b = rng.standard_normal(7)
    solver = lx.AutoLinearSolver(well_posed=True)
    assert isinstance(solver.select_solver(op), lx.Cholesky)
    sol = lx.linear_solve(op, jnp.asarray(b), solver).value
    # float64 solve of a cond ~ 50 system: 1e-10 leaves 4 orders of magnitude of headroom.
    np.testing.assert_allclose(sol, np.linalg.solve(dense, b), rtol=1e-10)
    # Composition with other lineax operators works through mv / as_matrix.
    summed = op + lx.DiagonalLinearOperator(jnp.ones(7))
    np.testing.assert_allclose(summed.as_matrix(), dense + np.eye(7), rtol=1e-13)


def test_jit_vmap_and_gradients():
    u, d, dense, rng = _problem(6, 2)
    b = jnp.asarray(rng.standard_normal(6))
    jitted = jax.jit(lambda op, b: (op.logdet(), op.solve(b), op.mv(b)))
    logdet, sol, mv = jitted(LowRankUpdate(u, d), b)
    np.testing.assert_allclose(logdet, np.linalg.slogdet(dense)[1], rtol=1e-12)
    np.testing.assert_allclose(sol, np.linalg.solve(dense, b), rtol=1e-10)
    np.testing.assert_allclose(mv, dense @ b, rtol=1e-12)

    scales = jnp.array([0.5, 1.0, 2.0])
    batched = jax.vmap(lambda s: LowRankUpdate(s * u, d).logdet())(scales)
    for i, s in enumerate(np.asarray(scales)):
        ref = np.linalg.slogdet(s**2 * u @ u.T + np.diag(d))[1]
        np.testing.assert_allclose(batched[i], ref, rtol=1e-12)

    # d log|A| / dU = 2 A^{-1} U and d log|A| / dd = diag(A^{-1}) (matrix calculus).
    # (jit: compiled once, much faster than eager autodiff on these tiny problems)
    gu, gd = jax.jit(jax.grad(lambda u, d: LowRankUpdate(u, d).logdet(), argnums=(0, 1)))(u, d)
    inv = np.linalg.inv(dense)
    np.testing.assert_allclose(gu, 2 * inv @ u, rtol=1e-10)
    np.testing.assert_allclose(gd, np.diag(inv), rtol=1e-10)

    # Differentiating through lx.linear_solve exercises lineax's JVP (TangentLinearOperator).
    def via_lineax(u):
        return jnp.sum(lx.linear_solve(LowRankUpdate(u, d), b).value)

    def via_woodbury(u):
        return jnp.sum(LowRankUpdate(u, d).solve(b))

    np.testing.assert_allclose(
        jax.jit(jax.grad(via_lineax))(u), jax.jit(jax.grad(via_woodbury))(u), rtol=1e-9
    )


@pytest.mark.usefixtures("no_runtime_typecheck")
def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"2-D \(n, k\) array U"):
        LowRankUpdate(jnp.ones(3))
    with pytest.raises(ValueError, match="length n=3"):
        LowRankUpdate(jnp.ones((3, 2)), jnp.ones(4))
    with pytest.raises(ValueError, match="must be non-negative"):
        LowRankUpdate(jnp.ones((3, 2)), jnp.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="needs a positive `diagonal`"):
        LowRankUpdate(jnp.ones((3, 2))).logdet()
    with pytest.raises(ValueError, match="needs a positive `diagonal`"):
        LowRankUpdate(jnp.ones((3, 2))).solve(jnp.ones(3))
    with pytest.raises(ValueError, match=r"b of shape \(3,\) or \(3, m\)"):
        LowRankUpdate(jnp.ones((3, 2)), jnp.ones(3)).solve(jnp.ones(4))
    with pytest.raises(TypeError, match="real"):
        LowRankUpdate(jnp.ones((3, 2), dtype=jnp.complex64))
