"""Localisation: taper matrices vs loops, Schur product, localiser modules, adaptive weights."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from filterax.primitives._distances import euclidean, periodic
from filterax.primitives._localization import (
    AbstractLocalizer,
    GaspariCohnLocalizer,
    GaussianLocalizer,
    HardCutoffLocalizer,
    SOARLocalizer,
    adaptive_localization,
    localization_matrix,
    localize,
)
from filterax.primitives._tapers import gaspari_cohn, gaussian_taper, hard_cutoff, soar_taper
from filterax.testing import random_spd

# Eager JAX compiles every primitive separately; checking jitted versions costs one XLA compile
# per test instead of dozens and keeps the suite fast. Error tests call the raw functions.
localization_matrix_j = eqx.filter_jit(localization_matrix)
localize_j = eqx.filter_jit(localize)
adaptive_j = eqx.filter_jit(adaptive_localization)
matrix_j = eqx.filter_jit(lambda loc, a, b=None: loc.matrix(a, b))
call_j = eqx.filter_jit(lambda loc, cov, a: loc(cov, a))


def np_gc(z):
    z = abs(z)
    if z <= 1:
        return -0.25 * z**5 + 0.5 * z**4 + 0.625 * z**3 - 5 / 3 * z**2 + 1
    if z <= 2:
        return z**5 / 12 - 0.5 * z**4 + 0.625 * z**3 + 5 / 3 * z**2 - 5 * z + 4 - 2 / (3 * z)
    return 0.0


LOCALIZERS = [
    (GaspariCohnLocalizer, gaspari_cohn),
    (GaussianLocalizer, gaussian_taper),
    (SOARLocalizer, soar_taper),
    (HardCutoffLocalizer, hard_cutoff),
]


def test_localization_matrix_matches_loop_periodic_l96():
    n, c = 40, 3.0
    x = np.arange(n, dtype=float)
    L = localization_matrix_j(x, x, c, distance=functools.partial(periodic, period=float(n)))
    expected = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            dist = min(abs(i - j), n - abs(i - j))
            expected[i, j] = np_gc(dist / c)
    # Polynomial of O(1) terms: float64 agrees with the scalar loop to ~1e-15.
    np.testing.assert_allclose(L, expected, atol=1e-12)
    # Periodic wrap: point 0 and point 39 are neighbours.
    assert float(L[0, 39]) == pytest.approx(np_gc(1 / c), abs=1e-12)


def test_localization_matrix_2d_state_to_obs():
    rng = np.random.default_rng(0)
    grid = rng.uniform(0, 10, (12, 2))
    obs = rng.uniform(0, 10, (5, 2))
    r = 2.0
    L = localization_matrix_j(grid, obs, r, taper=gaussian_taper, distance=euclidean)
    expected = np.array([[np.exp(-np.sum((g - o) ** 2) / (2 * r**2)) for o in obs] for g in grid])
    assert L.shape == (12, 5)
    np.testing.assert_allclose(L, expected, rtol=1e-12)


def test_localize_is_schur_product():
    rng = np.random.default_rng(1)
    cov = random_spd(rng, 6)
    taper = rng.uniform(0, 1, (6, 6))
    np.testing.assert_array_equal(localize_j(jnp.asarray(cov), jnp.asarray(taper)), cov * taper)


def test_localize_keeps_psd_with_gc():
    # Schur product theorem: a PSD covariance times a PD taper stays PSD.
    rng = np.random.default_rng(2)
    X = rng.standard_normal((5, 30))
    P = np.cov(X, rowvar=False)
    grid = np.arange(30.0)
    P_loc = localize_j(jnp.asarray(P), localization_matrix_j(grid, grid, 4.0))
    eig = np.linalg.eigvalsh(np.asarray(P_loc))
    # Eigenvalues are O(1); -1e-10 allows float64 rounding in eigvalsh.
    assert eig.min() > -1e-10
    # And, unlike the rank-4 ensemble covariance, it has full rank.
    assert np.sum(eig > 1e-8) == 30


def test_localize_operator_needs_densify():
    rng = np.random.default_rng(3)
    cov = random_spd(rng, 4)
    op = lx.MatrixLinearOperator(jnp.asarray(cov), lx.positive_semidefinite_tag)
    taper = jnp.asarray(rng.uniform(0, 1, (4, 4)))
    with pytest.raises(TypeError, match="densify=True"):
        localize(op, taper)
    np.testing.assert_allclose(localize_j(op, taper, densify=True), cov * np.asarray(taper))


def test_localize_shape_mismatch():
    with pytest.raises((ValueError, TypeError)):
        localize(jnp.eye(3), jnp.ones((3, 4)))


@pytest.mark.parametrize(("cls", "taper"), LOCALIZERS, ids=lambda v: getattr(v, "__name__", ""))
def test_localizer_matrix_and_call(cls, taper):
    rng = np.random.default_rng(4)
    grid = rng.uniform(0, 10, (7, 2))
    obs = rng.uniform(0, 10, (3, 2))
    loc = cls(2.5)
    np.testing.assert_allclose(
        matrix_j(loc, grid, obs), localization_matrix_j(grid, obs, 2.5, taper=taper), rtol=1e-12
    )
    cov = jnp.asarray(random_spd(rng, 7))
    np.testing.assert_allclose(
        call_j(loc, cov, grid), cov * localization_matrix_j(grid, grid, 2.5, taper)
    )


def test_localizer_periodic_distance_under_jit():
    n = 40
    loc = GaspariCohnLocalizer(3.0, distance=functools.partial(periodic, period=40))
    grid = jnp.arange(float(n))
    L = eqx.filter_jit(lambda lo, g: lo.matrix(g))(loc, grid)
    assert float(L[0, 39]) == pytest.approx(np_gc(1 / 3.0), abs=1e-12)
    assert float(L[0, 20]) == 0.0  # 20 > 2c = 6


def test_localizer_radius_is_dynamic_grad_and_vmap():
    grid = jnp.arange(10.0)

    @jax.jit
    def loss(r):
        return jnp.sum(GaspariCohnLocalizer(r).matrix(grid) ** 2)

    h = 1e-6
    fd = (loss(2.0 + h) - loss(2.0 - h)) / (2 * h)
    # Central difference: O(h^2) truncation, ~1e-9 relative rounding in float64.
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(2.0), fd, rtol=1e-6)

    # eqx.filter_grad reaches the radius as a leaf of the module.
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(m.matrix(grid) ** 2)))(
        GaspariCohnLocalizer(2.0)
    )
    np.testing.assert_allclose(grads.radius, fd, rtol=1e-6)

    radii = jnp.array([1.0, 2.0, 3.0])
    batched = jax.jit(jax.vmap(lambda r: GaussianLocalizer(r).matrix(grid)))(radii)
    for k in range(3):
        np.testing.assert_allclose(batched[k], matrix_j(GaussianLocalizer(float(radii[k])), grid))


@pytest.mark.parametrize(("cls", "taper"), LOCALIZERS, ids=lambda v: getattr(v, "__name__", ""))
def test_localizer_float32(cls, taper):
    # A Python-number radius is weakly typed, so float32 coordinates give a float32 matrix that
    # agrees with the float64 one to float32 rounding (1e-5 absolute on weights in [0, 1]).
    grid = jnp.arange(12.0, dtype=jnp.float32)
    L32 = matrix_j(cls(3.0), grid)
    assert L32.dtype == jnp.float32
    np.testing.assert_allclose(L32, matrix_j(cls(3.0), grid.astype(jnp.float64)), atol=1e-5)


def test_hard_cutoff_localizer_gradient_finite():
    grid = jnp.arange(6.0)
    g = jax.jit(jax.grad(lambda r: jnp.sum(HardCutoffLocalizer(r).matrix(grid))))(2.0)
    assert float(g) == 0.0


def test_integer_radius_is_promoted_to_float():
    loc = GaspariCohnLocalizer(3)
    assert jnp.issubdtype(jnp.asarray(loc.radius).dtype, jnp.floating)


@pytest.mark.parametrize("cls", [c for c, _ in LOCALIZERS], ids=lambda c: c.__name__)
def test_localizer_rejects_nonpositive_radius(cls):
    with pytest.raises(ValueError, match="radius"):
        cls(0.0)
    with pytest.raises(ValueError, match="radius"):
        cls(-2.0)


def test_custom_localizer_subclass():
    class CosineLocalizer(AbstractLocalizer):
        radius: float

        def taper(self, distance):
            z = jnp.clip(distance / self.radius, 0.0, 1.0)
            return 0.5 * (1.0 + jnp.cos(jnp.pi * z))

    loc = CosineLocalizer(4.0, distance=functools.partial(periodic, period=10.0))
    L = matrix_j(loc, jnp.arange(10.0))
    np.testing.assert_allclose(L[0, 9], 0.5 * (1 + np.cos(np.pi / 4)), rtol=1e-12)
    with pytest.raises(TypeError):
        AbstractLocalizer()


# --- adaptive localisation (Anderson 2007 hierarchical ensemble filter) ---


def np_hef_weights(X, Y, n_groups):
    """Loop transcription of Anderson (2007) / DART comp_reg_factor."""
    n_e, n_x = X.shape
    n_y = Y.shape[1]
    size = n_e // n_groups
    out = np.zeros((n_x, n_y))
    for i in range(n_x):
        for k in range(n_y):
            betas = []
            for g in range(n_groups):
                x = X[g * size : (g + 1) * size, i]
                y = Y[g * size : (g + 1) * size, k]
                x, y = x - x.mean(), y - y.mean()
                betas.append(np.dot(x, y) / np.dot(y, y))
            betas = np.array(betas)
            cross = sum(
                betas[a] * betas[b] for a in range(n_groups) for b in range(a + 1, n_groups)
            )
            out[i, k] = max(0.0, 2 * cross / (np.sum(betas**2) * (n_groups - 1)))
    return out


def test_adaptive_localization_matches_loop():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((24, 5))
    Y = X[:, :3] @ rng.standard_normal((3, 4)) + 0.5 * rng.standard_normal((24, 4))
    got = adaptive_j(jnp.asarray(X), jnp.asarray(Y), n_groups=4)
    # Sums of 6-member products: float64 agrees with the loop to ~1e-14.
    np.testing.assert_allclose(got, np_hef_weights(X, Y, 4), atol=1e-12)


def _correlated_pair(rng, n_e, n_pairs, rho):
    X = rng.standard_normal((n_e, n_pairs))
    Y = rho * X + np.sqrt(1 - rho**2) * rng.standard_normal((n_e, n_pairs))
    return X, Y


def test_adaptive_localization_strong_vs_spurious():
    rng = np.random.default_rng(6)
    n_pairs = 500
    # Strongly correlated (rho = 0.9) pairs with a large ensemble: weights near 1. Monte Carlo
    # with N_e = 400, M = 4 gives mean 0.998 and minimum 0.98 over 2000 pairs; 0.99 / 0.95
    # leave a wide margin.
    X, Y = _correlated_pair(rng, 400, n_pairs, 0.9)
    w_strong = np.diag(np.asarray(adaptive_j(jnp.asarray(X), jnp.asarray(Y))))
    assert w_strong.mean() > 0.99 and w_strong.min() > 0.95
    # Independent (spurious) pairs: the unclipped factor has expectation 0, so most weights
    # are clipped to exactly 0 (probability ~0.61 for M = 4) and the mean is ~0.14. Over 500
    # pairs the standard errors are ~0.02 and ~0.01: the thresholds are > 5 sigma away.
    X, Y = _correlated_pair(rng, 40, n_pairs, 0.0)
    w_spur = np.diag(np.asarray(adaptive_j(jnp.asarray(X), jnp.asarray(Y))))
    assert np.all((w_spur >= 0) & (w_spur <= 1))
    assert np.mean(w_spur == 0.0) > 0.5
    assert w_spur.mean() < 0.2


def test_adaptive_localization_grows_with_ensemble_size():
    # A weak true correlation (rho = 0.3) is hard to tell from noise with N_e = 40 (mean weight
    # ~0.40) but clear with N_e = 400 (~0.90); the gap of 0.3 is > 10 standard errors.
    rng = np.random.default_rng(7)
    means = []
    for n_e in (40, 400):
        X, Y = _correlated_pair(rng, n_e, 300, 0.3)
        w = np.diag(np.asarray(adaptive_j(jnp.asarray(X), jnp.asarray(Y))))
        means.append(w.mean())
    assert means[1] > means[0] + 0.3


def test_adaptive_localization_constant_obs_and_grad():
    rng = np.random.default_rng(8)
    X = jnp.asarray(rng.standard_normal((8, 3)))
    Y = jnp.concatenate([X[:, :1], jnp.ones((8, 1))], axis=1)  # second obs has no spread
    w = adaptive_localization(X, Y, n_groups=2)  # eager, compared with jit below
    np.testing.assert_array_equal(w[:, 1], 0.0)
    g = jax.jit(jax.grad(lambda x: jnp.sum(adaptive_localization(x, Y, n_groups=2))))(X)
    assert np.all(np.isfinite(g))
    # jit agrees with eager.
    np.testing.assert_allclose(
        jax.jit(adaptive_localization, static_argnames="n_groups")(X, Y, n_groups=2), w
    )


def test_adaptive_localization_bad_input():
    X = jnp.ones((10, 3))
    with pytest.raises(ValueError, match="n_groups"):
        adaptive_localization(X, X, n_groups=3)
    with pytest.raises(ValueError, match="n_groups"):
        adaptive_localization(X, X, n_groups=1)
    # A member-count mismatch is caught by the jaxtyping runtime checker (a TypeError) in the
    # test suite, and by check_same_members (ValueError) without it.
    with pytest.raises((ValueError, TypeError)):
        adaptive_localization(X, jnp.ones((8, 3)), n_groups=2)
    with pytest.raises(ValueError, match="at least 2"):
        adaptive_localization(jnp.ones((1, 3)), jnp.ones((1, 3)), n_groups=2)
