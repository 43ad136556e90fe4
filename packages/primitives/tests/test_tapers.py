"""Tapers: numpy transcriptions, Gaspari-Cohn properties, DAPPER relation, finite gradients."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.primitives._tapers import (
    dapper_radius_to_gc_halfwidth,
    gaspari_cohn,
    gaussian_taper,
    hard_cutoff,
    soar_taper,
)
from filterax.testing import tol

DTYPES = [jnp.float32, jnp.float64]
TAPERS = [gaspari_cohn, gaussian_taper, soar_taper, hard_cutoff]
# Eager JAX compiles every primitive separately; checking jitted versions costs one XLA compile
# per test instead of dozens and keeps the suite fast. Error tests call the raw functions.
JIT = {taper: eqx.filter_jit(taper) for taper in TAPERS}


def np_gaspari_cohn(d, c):
    """Direct transcription of Gaspari & Cohn (1999) eq. (4.10), point by point."""
    out = np.zeros(np.shape(d))
    for k, dk in np.ndenumerate(np.abs(d)):
        z = dk / c
        if z <= 1:
            out[k] = -0.25 * z**5 + 0.5 * z**4 + 0.625 * z**3 - 5 / 3 * z**2 + 1
        elif z <= 2:
            out[k] = z**5 / 12 - 0.5 * z**4 + 0.625 * z**3 + 5 / 3 * z**2 - 5 * z + 4 - 2 / (3 * z)
    return out


def np_dapper_dist2coeff_gc(dists, radius):
    """DAPPER's `dist2coeff(dists, radius, tag='GC')`, transcribed (R = 1.82 * radius)."""
    R = radius * 1.82
    coeffs = np.zeros(dists.shape)
    ind1 = dists <= R
    r2 = (dists[ind1] / R) ** 2
    r3 = (dists[ind1] / R) ** 3
    coeffs[ind1] = 1 + r2 * (-r3 / 4 + r2 / 2) + r3 * (5 / 8) - r2 * (5 / 3)
    ind2 = np.logical_and(R < dists, dists <= 2 * R)
    r1 = dists[ind2] / R
    r2 = (dists[ind2] / R) ** 2
    r3 = (dists[ind2] / R) ** 3
    coeffs[ind2] = r2 * (r3 / 12 - r2 / 2) + r3 * (5 / 8) + r2 * (5 / 3) - r1 * 5 + 4 - (2 / 3) / r1
    return coeffs


REFERENCES = {
    gaspari_cohn: np_gaspari_cohn,
    gaussian_taper: lambda d, r: np.exp(-(d**2) / (2 * r**2)),
    soar_taper: lambda d, r: (1 + np.abs(d) / r) * np.exp(-np.abs(d) / r),
    hard_cutoff: lambda d, r: (np.abs(d) <= r).astype(float),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("taper", TAPERS, ids=lambda f: f.__name__)
def test_matches_numpy_transcription(taper, dtype):
    radius = 2.5
    # A grid through 0 and 3 half-widths plus the branch points r, 2r of every taper; the hard
    # cut-off's discontinuity at d = r is compared at d = r exactly (kept: d <= r).
    d = np.concatenate([np.linspace(0.0, 7.5, 61), [radius, 2 * radius]])
    got = JIT[taper](jnp.asarray(d, dtype), radius)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, REFERENCES[taper](d, radius), rtol=tol(dtype), atol=tol(dtype))


def test_gaspari_cohn_properties():
    c = 1.7
    gc = JIT[gaspari_cohn]
    assert float(gc(jnp.zeros(()), c)) == 1.0
    d_beyond = jnp.array([2 * c + 1e-9, 2.5 * c, 10 * c])
    np.testing.assert_array_equal(gc(d_beyond, c), 0.0)
    # Value at the branch point: 5/24 from both branches.
    np.testing.assert_allclose(gc(jnp.asarray(c), c), 5 / 24, rtol=1e-12)
    # Continuity at c and 2c: one-sided values 1e-7 c apart differ by O(1e-7 * |slope|),
    # |slope| <= 2/c, so 1e-6 bounds the jump of a continuous function here.
    for point in (c, 2 * c):
        left, right = gc(jnp.array([point * (1 - 1e-7), point * (1 + 1e-7)]), c)
        assert abs(float(left) - float(right)) < 1e-6
    # Derivative continuity (C^1) at c and at 2c (where it is 0 on both sides); the second
    # derivative is bounded by ~4/c^2, so one-sided slopes 1e-7 c apart agree to 1e-6.
    grad = jax.jit(jax.vmap(jax.grad(gaspari_cohn), in_axes=(0, None)))
    for point in (c, 2 * c):
        g = grad(jnp.array([point * (1 - 1e-7), point * (1 + 1e-7)]), c)
        assert abs(float(g[0]) - float(g[1])) < 1e-6
    # Monotone non-increasing on [0, 3c].
    vals = np.asarray(gc(jnp.linspace(0.0, 3 * c, 2001), c))
    assert np.all(np.diff(vals) <= 1e-15)
    assert np.all((vals >= 0) & (vals <= 1))


def test_gaspari_cohn_equals_dapper_with_conversion():
    loc_rad = 4.0
    d = np.linspace(0.0, 16.0, 321)
    c = dapper_radius_to_gc_halfwidth(loc_rad)
    np.testing.assert_allclose(c, 7.28, rtol=1e-12)
    gc = JIT[gaspari_cohn]
    np.testing.assert_allclose(
        gc(jnp.asarray(d), c), np_dapper_dist2coeff_gc(d, loc_rad), atol=1e-12
    )
    # At d = loc_rad the GC value is close to (not exactly) exp(-1/2): 0.634 vs 0.607.
    np.testing.assert_allclose(gc(jnp.asarray(loc_rad), c), 0.6336, atol=1e-4)


def test_named_values():
    np.testing.assert_allclose(JIT[gaussian_taper](jnp.asarray(2.0), 2.0), np.exp(-0.5), rtol=1e-12)
    np.testing.assert_allclose(JIT[soar_taper](jnp.asarray(1.0), 1.0), 2 / np.e, rtol=1e-12)
    np.testing.assert_array_equal(
        JIT[hard_cutoff](jnp.array([0.5, 1.0, 1.5]), 1.0), [1.0, 1.0, 0.0]
    )


@pytest.mark.parametrize("taper", TAPERS, ids=lambda f: f.__name__)
def test_gradients_finite_including_branch_points(taper):
    radius = 1.5
    # 0 (the sqrt/pole trap), the branch points, and beyond the support.
    d = jnp.array([0.0, 0.3, radius, 1.7, 2 * radius, 3.5 * radius])
    g_d = jax.jit(jax.vmap(jax.grad(taper), in_axes=(0, None)))(d, radius)
    g_r = jax.jit(jax.vmap(jax.grad(taper, argnums=1), in_axes=(0, None)))(d, radius)
    assert np.all(np.isfinite(g_d)) and np.all(np.isfinite(g_r))


@pytest.mark.parametrize(
    "taper", [gaspari_cohn, gaussian_taper, soar_taper], ids=lambda f: f.__name__
)
def test_radius_gradient_matches_finite_difference(taper):
    d = jnp.array([0.2, 0.9, 1.3, 2.1])
    radius, h = 1.2, 1e-6

    @jax.jit
    def loss(r):
        return jnp.sum(taper(d, r))

    fd = (loss(radius + h) - loss(radius - h)) / (2 * h)
    # Central differences have O(h^2) = 1e-12 truncation and ~1e-10 rounding error in float64.
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(radius), fd, rtol=1e-6)


def test_hard_cutoff_gradient_is_zero():
    g = jax.jit(jax.grad(lambda r: jnp.sum(hard_cutoff(jnp.array([0.5, 1.0, 2.0]), r))))(1.0)
    assert float(g) == 0.0


@pytest.mark.parametrize("taper", TAPERS, ids=lambda f: f.__name__)
def test_jit_and_vmap_over_radius(taper):
    d = jnp.linspace(0.0, 5.0, 11)
    radii = jnp.array([0.5, 1.0, 2.0])
    batched = jax.jit(jax.vmap(taper, in_axes=(None, 0)))(d, radii)
    for k, r in enumerate(radii):
        np.testing.assert_allclose(batched[k], JIT[taper](d, float(r)), rtol=1e-12)


@pytest.mark.parametrize("taper", TAPERS, ids=lambda f: f.__name__)
def test_bad_radius(taper):
    with pytest.raises(ValueError, match="radius"):
        taper(jnp.ones(3), 0.0)
    with pytest.raises(ValueError, match="radius"):
        taper(jnp.ones(3), -1.0)
    with pytest.raises((ValueError, TypeError)):
        taper(jnp.ones(3), jnp.ones(2))
