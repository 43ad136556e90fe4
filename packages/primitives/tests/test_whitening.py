"""Noise whitening: every structure against dense numpy linear algebra, and the type registry.

Dense references use float64 numpy on O(1) covariances with condition numbers < 1e2, so the
identities (``G^T G = R^{-1}``, solves, log-determinants) hold to ~1e-13; 1e-10 leaves room.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jaxtyping
import lineax as lx
import numpy as np
import pytest

import filterax.primitives as fxp

TOL = 1e-10
N = 6


def _dense_cov(seed, n=N):
    a = np.random.default_rng(seed).standard_normal((n, n))
    return a @ a.T / n + np.eye(n)


def _noises():
    rng = np.random.default_rng(0)
    d = rng.uniform(0.5, 2.0, N)
    return {
        "diagonal": (fxp.diagonal_noise(jnp.asarray(d)), np.diag(d)),
        "dense": (fxp.dense_noise(jnp.asarray(_dense_cov(1))), _dense_cov(1)),
        # k < n: the k x k push-through core; k >= n: the n x n core.
        "low_rank_2": _low_rank(2, d),
        "low_rank_8": _low_rank(8, d),
        # a zero column: U~^T U~ has a repeated zero eigenvalue
        "low_rank_degenerate": _low_rank(3, d, zero_column=True),
    }


def _low_rank(k, d, zero_column=False):
    u = np.random.default_rng(k).standard_normal((N, k))
    if zero_column:
        u[:, -1] = 0.0
    return fxp.low_rank_noise(jnp.asarray(u), jnp.asarray(d)), np.diag(d) + u @ u.T


NOISES = _noises()


def _inverse_sqrt(r):
    lam, u = np.linalg.eigh(r)
    return (u / np.sqrt(lam)) @ u.T


@pytest.mark.parametrize("name", list(NOISES))
def test_full_whitening_is_an_inverse_square_root(name):
    op, r = NOISES[name]
    wh = fxp.noise_whitening(op)
    G = np.asarray(wh.whiten(jnp.eye(N))).T  # row i of whiten(I) is G e_i
    np.testing.assert_allclose(G.T @ G, np.linalg.inv(r), atol=TOL)
    np.testing.assert_allclose(np.asarray(wh.vector(jnp.ones(N))), G @ np.ones(N), atol=TOL)
    np.testing.assert_allclose(np.asarray(wh.rows(jnp.eye(N))), G.T, atol=TOL)
    if name == "diagonal":
        np.testing.assert_allclose(G, _inverse_sqrt(r), atol=TOL)
    if name == "dense":
        np.testing.assert_allclose(G, np.linalg.inv(np.linalg.cholesky(r)), atol=TOL)


def test_low_rank_with_isotropic_diagonal_is_the_symmetric_inverse_square_root():
    # L = c I commutes with N^{-1/2}, so G = R^{-1/2} exactly (the symmetric root).
    u = np.random.default_rng(4).standard_normal((N, 2))
    r = 0.7 * np.eye(N) + u @ u.T
    wh = fxp.noise_whitening(fxp.low_rank_noise(jnp.asarray(u), jnp.full(N, 0.7)))
    G = np.asarray(wh.whiten(jnp.eye(N))).T
    np.testing.assert_allclose(G, _inverse_sqrt(r), atol=TOL)


@pytest.mark.parametrize("name", list(NOISES))
def test_base_whitening_residual_factor_and_woodbury_pieces(name):
    op, r = NOISES[name]
    wh = fxp.noise_whitening(op)
    Linv = np.asarray(wh.white(jnp.eye(N))).T  # L^{-1}
    F = np.zeros((N, 0)) if wh.factor is None else np.asarray(wh.factor)
    noise = np.eye(N) + F @ F.T  # N = I + U~ U~^T
    L = np.linalg.inv(Linv)
    np.testing.assert_allclose(L @ noise @ L.T, r, atol=TOL)
    b = np.random.default_rng(5).standard_normal((3, N))
    np.testing.assert_allclose(wh.noise_solve(jnp.asarray(b)), b @ np.linalg.inv(noise), atol=TOL)
    g = np.random.default_rng(6).standard_normal((4, N))
    y = np.random.default_rng(7).standard_normal(N)
    res = g - y[None, :]
    misfit = 0.5 * np.einsum("ji,ik,jk->j", res, np.linalg.inv(r), res)
    np.testing.assert_allclose(wh.misfits(jnp.asarray(g), jnp.asarray(y)), misfit, atol=TOL)
    np.testing.assert_allclose(wh.solve(jnp.asarray(y)), np.linalg.solve(r, y), atol=TOL)
    np.testing.assert_allclose(wh.solve(jnp.asarray(b.T)), np.linalg.solve(r, b.T), atol=TOL)
    np.testing.assert_allclose(wh.logdet(), np.linalg.slogdet(r)[1], atol=TOL)
    assert wh.size == N


@pytest.mark.parametrize("k", [0, 2, 9])
def test_noise_sample_has_covariance_n(k):
    # Monte Carlo: 40000 draws of a 3-d Gaussian; the sample covariance error is
    # ~sqrt(2/40000) * |N| ~ 0.007 * 3, so 0.1 is a >4-sigma bound.
    factor = None if k == 0 else jnp.asarray(np.random.default_rng(k).standard_normal((3, k)))
    draws = fxp.whitened_noise_sample(jax.random.key(0), 40000, 3, factor, jnp.float64)
    target = np.eye(3) + (0 if factor is None else np.asarray(factor @ factor.T))
    np.testing.assert_allclose(np.cov(np.asarray(draws).T), target, atol=0.1 * (1 + k))
    again = fxp.whitened_noise_sample(jax.random.key(0), 40000, 3, factor, jnp.float64)
    np.testing.assert_array_equal(draws, again)


def test_jit_vmap_and_gradient_through_the_whitening():
    _, r = NOISES["low_rank_degenerate"]
    op = NOISES["low_rank_degenerate"][0]
    y = jnp.asarray(np.random.default_rng(8).standard_normal(N))

    def loss(scale):
        scaled = fxp.low_rank_noise(jnp.sqrt(scale) * op.factor, scale * op.diagonal)
        wh = fxp.noise_whitening(scaled)
        return jnp.sum(wh.whiten(y) ** 2) + wh.logdet()

    # d/ds [y^T R^{-1} y / s + log|s R|] at s = 1: -y^T R^{-1} y + N
    expected = -y @ np.linalg.solve(r, y) + N
    grad = jax.grad(loss)(1.0)
    assert np.isfinite(grad)
    np.testing.assert_allclose(grad, expected, rtol=1e-9)
    np.testing.assert_allclose(jax.jit(loss)(1.0), loss(1.0), rtol=1e-12)
    losses = jax.vmap(loss)(jnp.array([0.5, 1.0, 2.0]))
    np.testing.assert_allclose(losses[1], loss(1.0), rtol=1e-12)


def test_unregistered_lineax_operators_fall_back_by_structure():
    d = jnp.array([1.0, 4.0, 9.0])
    tagged = lx.MatrixLinearOperator(jnp.diag(d), lx.diagonal_tag)
    assert isinstance(fxp.noise_whitening(tagged).root, fxp.DiagonalRoot)
    identity = lx.IdentityLinearOperator(jax.ShapeDtypeStruct((3,), jnp.float64))
    np.testing.assert_array_equal(fxp.noise_whitening(identity).white(d), d)
    dense = lx.MatrixLinearOperator(jnp.asarray(_dense_cov(9, 3)))
    assert isinstance(fxp.noise_whitening(dense).root, fxp.CholeskyRoot)


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


@pytest.mark.usefixtures("no_runtime_typecheck")
def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="positive diagonal"):
        fxp.noise_whitening(fxp.low_rank_noise(jnp.ones((3, 1))))
    with pytest.raises(TypeError, match="as_noise_operator"):
        fxp.noise_whitening(jnp.eye(3))
    with pytest.raises(TypeError, match="AbstractNoiseRoot"):
        fxp.Whitening.build(jnp.eye(3))


# --- extending the registry with a new structure -----------------------------------------------


class BlockDiagonalNoise(lx.AbstractLinearOperator):
    """A toy block-diagonal covariance ``blockdiag(B_1, ..., B_m)`` (not known to filterax)."""

    blocks: tuple

    def mv(self, vector):
        parts, start = [], 0
        for block in self.blocks:
            size = block.shape[0]
            parts.append(block @ vector[start : start + size])
            start += size
        return jnp.concatenate(parts)

    def as_matrix(self):
        return jsl.block_diag(*self.blocks)

    def transpose(self):
        return self

    def in_structure(self):
        size = sum(block.shape[0] for block in self.blocks)
        return jax.ShapeDtypeStruct((size,), self.blocks[0].dtype)

    def out_structure(self):
        return self.in_structure()


@lx.is_diagonal.register(BlockDiagonalNoise)
def _(op):
    return False


@lx.is_symmetric.register(BlockDiagonalNoise)
def _(op):
    return True


def _all_shapes(jaxpr):
    """Every intermediate shape of a jaxpr, sub-jaxprs (jit, custom rules, loops) included."""
    shapes = set()
    for eqn in jaxpr.eqns:
        shapes.update(tuple(var.aval.shape) for var in eqn.outvars)
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    shapes |= _all_shapes(inner)
    return shapes


def _split(x, sizes, axis):
    return jnp.split(x, np.cumsum(sizes)[:-1].tolist(), axis=axis)


class BlockCholeskyRoot(fxp.AbstractNoiseRoot):
    """One Cholesky factor per block: never an n x n matrix."""

    chols: tuple

    @property
    def sizes(self):
        return [c.shape[0] for c in self.chols]

    @property
    def size(self):
        return sum(self.sizes)

    def solve(self, x):
        parts = _split(x, self.sizes, 0)
        return jnp.concatenate(
            [
                jsl.solve_triangular(c, p, lower=True)
                for c, p in zip(self.chols, parts, strict=True)
            ],
            axis=0,
        )

    def solve_transpose(self, x):
        parts = _split(x, self.sizes, 0)
        return jnp.concatenate(
            [
                jsl.solve_triangular(c, p, lower=True, trans=1)
                for c, p in zip(self.chols, parts, strict=True)
            ],
            axis=0,
        )

    def white(self, x):
        if x.ndim == 1:
            return self.solve(x)
        return self.solve(x.T).T

    def mv(self, x):
        parts = _split(x, self.sizes, 0)
        return jnp.concatenate([c @ p for c, p in zip(self.chols, parts, strict=True)], axis=0)

    def logdet(self):
        return sum(2.0 * jnp.sum(jnp.log(jnp.diagonal(c))) for c in self.chols)


BUILDER_CALLS = []


@fxp.noise_whitening.register(BlockDiagonalNoise)
def _(op, dtype=None):
    BUILDER_CALLS.append(type(op))
    return fxp.Whitening.build(BlockCholeskyRoot(tuple(jnp.linalg.cholesky(b) for b in op.blocks)))


@fxp.mask_noise.register(BlockDiagonalNoise)
def _(op, mask):
    blocks, start = [], 0
    for block in op.blocks:
        m = mask[start : start + block.shape[0]]
        keep = m[:, None] & m[None, :]
        blocks.append(jnp.where(keep, block, jnp.eye(block.shape[0], dtype=block.dtype)))
        start += block.shape[0]
    return BlockDiagonalNoise(tuple(blocks))


def _block_noise():
    blocks = (jnp.asarray(_dense_cov(11, 2)), jnp.asarray(_dense_cov(12, 3)))
    return BlockDiagonalNoise(blocks), np.asarray(jsl.block_diag(*blocks))


def test_registered_structure_whitens_without_densifying():
    op, r = _block_noise()
    wh = fxp.noise_whitening(op)
    assert isinstance(wh.root, BlockCholeskyRoot)
    G = np.asarray(wh.whiten(jnp.eye(5))).T
    np.testing.assert_allclose(G.T @ G, np.linalg.inv(r), atol=TOL)
    np.testing.assert_allclose(wh.logdet(), np.linalg.slogdet(r)[1], atol=TOL)
    v = jnp.arange(5.0)
    np.testing.assert_allclose(wh.solve(v), np.linalg.solve(r, np.asarray(v)), atol=TOL)
    jaxpr = jax.make_jaxpr(lambda o: fxp.noise_whitening(o).whiten(v))(op)
    shapes = _all_shapes(jaxpr.jaxpr)
    assert (2, 2) in shapes and (3, 3) in shapes
    assert (5, 5) not in shapes  # only the 2 x 2 and 3 x 3 blocks are ever factorised


def test_registered_structure_flows_through_gain_and_likelihood_with_missing_obs():
    op, r = _block_noise()
    rng = np.random.default_rng(13)
    X = jnp.asarray(rng.standard_normal((8, 4)))
    Y = jnp.asarray(rng.standard_normal((8, 5)))
    obs = jnp.asarray(rng.standard_normal(5)).at[3].set(jnp.nan)
    BUILDER_CALLS.clear()
    got_ll = fxp.log_likelihood(Y, obs, op)
    got_gain = fxp.kalman_gain(X, Y, op, obs=obs)
    assert BUILDER_CALLS == [BlockDiagonalNoise, BlockDiagonalNoise]  # the masked op kept its type
    np.testing.assert_allclose(got_ll, fxp.log_likelihood(Y, obs, jnp.asarray(r)), atol=TOL)
    np.testing.assert_allclose(got_gain, fxp.kalman_gain(X, Y, jnp.asarray(r), obs=obs), atol=TOL)
