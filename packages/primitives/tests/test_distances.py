"""Distances: numpy references, periodic wrap, haversine known pairs, safe gradients."""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.primitives._distances import (
    PeriodicDistance,
    euclidean,
    haversine,
    pairwise_distances,
    periodic,
)
from filterax.testing import tol

# Eager JAX compiles every primitive separately; checking jitted versions costs one XLA compile
# per test instead of dozens and keeps the suite fast. Error tests call the raw functions.
euclidean_j = eqx.filter_jit(euclidean)
periodic_j = eqx.filter_jit(periodic)
haversine_j = eqx.filter_jit(haversine)
pairwise_j = eqx.filter_jit(pairwise_distances)

# Distances are a handful of flops from the inputs: float64 agrees with numpy to ~1e-15,
# float32 to ~1e-7 relative; tol() gives 1e-9 / 1e-4, generous for both.
DTYPES = [jnp.float32, jnp.float64]


def _np_periodic(a, b, period):
    delta = np.abs(np.asarray(a, float) - np.asarray(b, float)) % period
    delta = np.minimum(delta, period - delta)
    return np.sqrt(np.sum(delta**2))


def _np_haversine(a, b, radius=6371.0):
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * radius * math.asin(math.sqrt(h))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_euclidean_matches_numpy(dtype, dim):
    rng = np.random.default_rng(dim)
    a, b = rng.standard_normal((2, dim))
    got = euclidean_j(jnp.asarray(a, dtype), jnp.asarray(b, dtype))
    assert got.dtype == dtype
    np.testing.assert_allclose(got, np.linalg.norm(a - b), rtol=tol(dtype))


def test_euclidean_accepts_scalars():
    assert float(euclidean_j(3.0, -1.0)) == pytest.approx(4.0, abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_periodic_wraps_minimum_image(dtype):
    # 1 and 39 on a ring of 40 are 2 apart, not 38.
    got = periodic_j(jnp.asarray([1.0], dtype), jnp.asarray([39.0], dtype), period=40.0)
    np.testing.assert_allclose(got, 2.0, rtol=tol(dtype))
    # Exactly half a period is the largest possible distance.
    np.testing.assert_allclose(periodic_j(jnp.array([0.0]), jnp.array([20.0]), 40.0), 20.0)


def test_periodic_per_axis_matches_numpy():
    rng = np.random.default_rng(0)
    period = np.array([10.0, 4.0])
    for _ in range(20):
        a = rng.uniform(0, 1, 2) * period
        b = rng.uniform(0, 1, 2) * period
        got = periodic_j(jnp.asarray(a), jnp.asarray(b), jnp.asarray(period))
        np.testing.assert_allclose(got, _np_periodic(a, b, period), rtol=1e-12)


def test_periodic_equals_euclidean_when_close():
    a, b = jnp.array([3.0, 1.0]), jnp.array([4.0, 2.5])
    np.testing.assert_allclose(periodic_j(a, b, 100.0), euclidean_j(a, b), rtol=1e-12)


def test_haversine_london_paris():
    london, paris = (51.5074, -0.1278), (48.8566, 2.3522)
    got = float(haversine_j(jnp.array(london), jnp.array(paris)))
    # Published great-circle distance is ~343.5 km (R = 6371 km); the 0.5 km tolerance covers
    # the rounding of the quoted figure, the numpy transcription must agree to 1e-9 relative.
    assert got == pytest.approx(343.5, abs=0.5)
    assert got == pytest.approx(_np_haversine(london, paris), rel=1e-9)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0.0, 0.0), (0.0, 90.0), math.pi * 6371.0 / 2),  # quarter of the equator
        ((90.0, 0.0), (-90.0, 0.0), math.pi * 6371.0),  # pole to pole
        ((10.0, 20.0), (10.0, 20.0), 0.0),
        ((0.0, 179.0), (0.0, -179.0), 2 * math.pi * 6371.0 / 180),  # across the dateline
    ],
)
def test_haversine_known_pairs(a, b, expected):
    got = float(haversine_j(jnp.array(a), jnp.array(b)))
    # Exact geometric values: float64 trig agrees to ~1e-12 relative.
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_haversine_radius_scales():
    a, b = jnp.array([0.0, 0.0]), jnp.array([0.0, 90.0])
    np.testing.assert_allclose(haversine_j(a, b, radius=1.0), math.pi / 2, rtol=1e-12)


@pytest.mark.parametrize(
    "distance",
    [euclidean, functools.partial(periodic, period=7.0)],
    ids=["euclidean", "periodic"],
)
def test_pairwise_matches_loop(distance):
    rng = np.random.default_rng(1)
    A = rng.uniform(0, 7, (5, 2))
    B = rng.uniform(0, 7, (4, 2))
    got = pairwise_j(A, B, distance)
    expected = np.empty((5, 4))
    for i in range(5):
        for j in range(4):
            if distance is euclidean:
                expected[i, j] = np.linalg.norm(A[i] - B[j])
            else:
                expected[i, j] = _np_periodic(A[i], B[j], 7.0)
    assert got.shape == (5, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_pairwise_kwargs_and_1d_coords():
    x = jnp.arange(40.0)
    D = pairwise_j(x, x, periodic, period=40.0)
    idx = np.arange(40)
    diff = np.abs(idx[:, None] - idx[None, :])
    np.testing.assert_allclose(D, np.minimum(diff, 40 - diff), atol=1e-12)


def test_pairwise_haversine():
    pts = np.array([[51.5074, -0.1278], [48.8566, 2.3522], [40.7128, -74.0060]])
    D = pairwise_j(pts, pts, haversine)
    for i in range(3):
        for j in range(3):
            assert float(D[i, j]) == pytest.approx(
                _np_haversine(pts[i], pts[j]), rel=1e-9, abs=1e-9
            )


@pytest.mark.parametrize(
    "distance",
    [euclidean, functools.partial(periodic, period=10.0), haversine],
    ids=["euclidean", "periodic", "haversine"],
)
def test_gradient_finite_at_zero_distance(distance):
    # The sqrt(0) trap: without the safe-where the gradient is NaN at a == b.
    a = jnp.array([1.0, 2.0])
    grad = jax.jit(jax.grad(lambda p: distance(p, a)))(a)
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad, 0.0)
    # And the pairwise matrix (whose diagonal is zero) is differentiable.
    pts = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    g = jax.jit(jax.grad(lambda p: pairwise_distances(p, p, distance).sum()))(pts)
    assert np.all(np.isfinite(g))


def test_euclidean_gradient_away_from_zero():
    a, b = jnp.array([0.0, 0.0]), jnp.array([3.0, 4.0])
    np.testing.assert_allclose(jax.jit(jax.grad(euclidean))(a, b), [-0.6, -0.8], rtol=1e-12)


def test_haversine_gradient_finite_at_antipode():
    a, b = jnp.array([0.0, 0.0]), jnp.array([0.0, 180.0])
    assert np.all(np.isfinite(jax.jit(jax.grad(haversine))(a, b)))


def test_jit():
    f = jax.jit(lambda a, b: pairwise_distances(a, b, periodic, period=40.0))
    np.testing.assert_allclose(f(jnp.array([1.0]), jnp.array([39.0])), [[2.0]])


# Shape mismatches that the jaxtyping annotations already describe are reported by the runtime
# checker (a TypeError subclass) in the test suite and by our own ValueError without it.
SHAPE_ERRORS = (ValueError, TypeError)


def test_bad_inputs():
    with pytest.raises(SHAPE_ERRORS):
        euclidean(jnp.ones(2), jnp.ones(3))
    with pytest.raises(SHAPE_ERRORS):
        haversine(jnp.ones(3), jnp.ones(3))
    with pytest.raises(ValueError, match="one pair of points"):
        euclidean(jnp.ones((2, 2)), jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="period"):
        periodic(jnp.ones(2), jnp.ones(2), jnp.ones(3))
    with pytest.raises(ValueError, match="positive"):
        periodic(jnp.ones(1), jnp.zeros(1), -1.0)
    with pytest.raises(SHAPE_ERRORS):
        pairwise_distances(jnp.ones((3, 2)), jnp.ones((3, 3)))
    with pytest.raises(ValueError, match=r"\(n, D\)"):
        pairwise_distances(jnp.ones((3, 2, 2)), jnp.ones((3, 2, 2)))
    with pytest.raises(TypeError):
        pairwise_distances(jnp.ones(3), jnp.ones(3), distance=3.0)


# --- PeriodicDistance: the hashable periodic distance a model carries ---------------------------


def test_periodic_distance_matches_numpy_and_periodic():
    # Same single-pair program as `periodic`: bit-identical on a pairwise matrix; numpy
    # reference to round-off (1e-12 on O(10) distances).
    rng = np.random.default_rng(7)
    A, B = rng.uniform(-50, 50, (6, 2)), rng.uniform(-50, 50, (5, 2))
    for period in (40.0, (40.0, 17.0)):
        got = pairwise_j(jnp.asarray(A), jnp.asarray(B), PeriodicDistance(period))
        ref = pairwise_j(jnp.asarray(A), jnp.asarray(B), periodic, period=jnp.asarray(period))
        np.testing.assert_array_equal(got, ref)
        expected = [[_np_periodic(a, b, np.asarray(period)) for b in B] for a in A]
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_periodic_distance_is_equal_and_hashes_by_period():
    # Static configuration compared by value, so separately built models share jit caches
    # (a functools.partial compares by identity and would retrace).
    assert PeriodicDistance(40) == PeriodicDistance(40.0)
    assert hash(PeriodicDistance(40)) == hash(PeriodicDistance(40.0))
    assert PeriodicDistance(40.0) != PeriodicDistance(41.0)
    assert PeriodicDistance([10, 20]).period == (10.0, 20.0)
    assert jax.tree_util.tree_leaves(PeriodicDistance(40.0)) == []
    traces = []

    @eqx.filter_jit
    def f(distance, x):
        traces.append(None)
        return pairwise_distances(x, x, distance)

    x = jnp.arange(4.0)
    f(PeriodicDistance(4.0), x)
    f(PeriodicDistance(4.0), x)
    assert len(traces) == 1
    f(functools.partial(periodic, period=4.0), x)
    f(functools.partial(periodic, period=4.0), x)
    assert len(traces) == 3


def test_periodic_distance_bad_period():
    for bad in (0.0, -1.0, float("inf"), float("nan"), ()):
        with pytest.raises(ValueError, match="positive finite"):
            PeriodicDistance(bad)
    with pytest.raises(TypeError, match="concrete number"):
        PeriodicDistance("forty")
