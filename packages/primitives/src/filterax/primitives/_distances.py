"""Distances between grid points and observation locations.

Every distance acts on ONE pair of points (``(D,)`` coordinate vectors) and returns a scalar;
``pairwise_distances`` vmaps it into an ``(n, m)`` matrix. All distances have finite gradients
at zero separation (the ``sqrt`` at 0 would otherwise give ``inf``/``NaN`` derivatives), so a
localisation matrix, whose diagonal is always a zero distance, can be differentiated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real, ScalarLike

from ._validation import check_positive

__all__ = ["PeriodicDistance", "euclidean", "haversine", "pairwise_distances", "periodic"]


def _safe_sqrt(x: Array) -> Array:
    # sqrt'(0) = inf and inf * 0 = NaN in the chain rule; route zeros through a dummy value so
    # the derivative at zero is exactly 0 (the subgradient that keeps tapers smooth).
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _as_points(a: Any, b: Any, name: str) -> tuple[Array, Array]:
    a = jnp.atleast_1d(jnp.asarray(a))
    b = jnp.atleast_1d(jnp.asarray(b))
    if a.ndim != 1 or b.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"{name} acts on one pair of points: pass two coordinate vectors of the same shape "
            f"(D,); got shapes {a.shape} and {b.shape}. Use pairwise_distances for (n, D) "
            "and (m, D) coordinate arrays."
        )
    dtype = jnp.result_type(a, b, float)
    return a.astype(dtype), b.astype(dtype)


def euclidean(a: Real[ArrayLike, "*D"], b: Real[ArrayLike, "*D"]) -> Float[Array, ""]:
    """Euclidean distance between two points.

    $d(a, b) = \\lVert a - b \\rVert_2 = \\sqrt{\\sum_k (a_k - b_k)^2}$, with gradient 0 (not
    NaN) at $a = b$.

    **Arguments:**

    - `a`, `b`: coordinates of one point each, shape `(D,)` (a scalar is a 1-D coordinate).

    **Returns:**

    The scalar distance.

    DAPPER equivalent: `dapper.tools.localization.pairwise_distances(..., domain=None)`.

    **Example:**

    ```python
    euclidean(jnp.array([0.0, 0.0]), jnp.array([3.0, 4.0]))  # 5.0
    ```
    """
    a, b = _as_points(a, b, "euclidean")
    return _safe_sqrt(jnp.sum((a - b) ** 2))


def periodic(
    a: Real[ArrayLike, "*D"], b: Real[ArrayLike, "*D"], period: Real[ArrayLike, "*P"]
) -> Float[Array, ""]:
    """Euclidean distance on a periodic box (minimum-image convention).

    Per axis $\\delta_k = |a_k - b_k| \\bmod L_k$, $\\delta_k \\leftarrow \\min(\\delta_k,
    L_k - \\delta_k)$, and $d = \\lVert \\delta \\rVert_2$. Use it for Lorenz-96 (one axis of
    period $N_x$) or doubly periodic 2-D grids.

    **Arguments:**

    - `a`, `b`: coordinates of one point each, shape `(D,)`.
    - `period`: the domain length $L$, a scalar (same on every axis) or one per axis `(D,)`.

    **Returns:**

    The scalar minimum-image distance, at most $\\lVert L \\rVert_2 / 2$.

    DAPPER equivalent: `pairwise_distances(A, B, periodic=True, domain=period)`.

    **Example:**

    ```python
    periodic(jnp.array([1.0]), jnp.array([39.0]), period=40.0)  # 2.0
    dist = PeriodicDistance(40.0)  # the same with the period fixed, for a model or localiser
    ```
    """
    a, b = _as_points(a, b, "periodic")
    period_arr = jnp.asarray(period, dtype=a.dtype)
    if period_arr.ndim > 1 or (period_arr.ndim == 1 and period_arr.shape != a.shape):
        raise ValueError(
            f"period must be a scalar or one length per axis, shape {a.shape}; got shape "
            f"{period_arr.shape}."
        )
    check_positive(period, "period")
    if period_arr.ndim == 0:
        period_arr = jnp.broadcast_to(period_arr, a.shape)
    delta = jnp.remainder(jnp.abs(a - b), period_arr)
    delta = jnp.minimum(delta, period_arr - delta)
    return _safe_sqrt(jnp.sum(delta**2))


def _as_period(period: Any) -> float | tuple[float, ...]:
    # Python floats (one, or one per axis): the distance is static and hashes by value.
    scalar = np.ndim(period) == 0
    try:
        values = [float(period)] if scalar else [float(p) for p in period]
    except Exception as exc:  # a tracer, or something that is not numbers
        raise TypeError(
            "PeriodicDistance(period) needs a concrete number, or one per axis (it is static "
            f"configuration, like a grid size); got {period!r}."
        ) from exc
    if not values or not all(math.isfinite(p) and p > 0 for p in values):
        raise ValueError(
            f"PeriodicDistance(period) must be a positive finite length (or one per axis); got "
            f"{period!r}."
        )
    return values[0] if scalar else tuple(values)


class PeriodicDistance(eqx.Module):
    """`periodic` with its period fixed: ``PeriodicDistance(L)(a, b) == periodic(a, b, L)``.

    The distance a model on a periodic domain carries (`filterax.zoo` presets: Lorenz-96 and
    Kuramoto–Sivashinsky in grid units). Unlike ``functools.partial(periodic, period=L)``,
    two `PeriodicDistance` with the same period are equal and hash alike, so a model holding
    one as static configuration reuses ``jax.jit``-compiled programs across model objects.

    **Arguments:**

    - `period`: the domain length ``L`` (a positive Python number, static), or a tuple of
      one per axis.

    **Example:**

    ```python
    dist = PeriodicDistance(40.0)
    dist(jnp.array([1.0]), jnp.array([39.0]))  # 2.0
    pairwise_distances(jnp.arange(40.0), jnp.arange(40.0), dist)  # (40, 40)
    ```

    DAPPER equivalent: ``pairwise_distances(A, B, domain=period)`` (``nd_Id_localization``).
    """

    period: float | tuple[float, ...] = eqx.field(static=True, converter=_as_period)

    def __call__(self, a: Real[ArrayLike, "*D"], b: Real[ArrayLike, "*D"]) -> Float[Array, ""]:
        """The minimum-image distance between two points (see `periodic`)."""
        period = self.period
        return periodic(a, b, period if isinstance(period, float) else np.asarray(period))


def haversine(
    a: Real[ArrayLike, " 2"], b: Real[ArrayLike, " 2"], radius: ScalarLike = 6371.0
) -> Float[Array, ""]:
    """Great-circle distance between two (latitude, longitude) points given in degrees.

    $h = \\sin^2\\frac{\\Delta\\varphi}{2} + \\cos\\varphi_1\\cos\\varphi_2
    \\sin^2\\frac{\\Delta\\lambda}{2}$, $d = 2R\\,\\operatorname{atan2}(\\sqrt{h},
    \\sqrt{1-h})$ (the well-conditioned form of $2R\\arcsin\\sqrt h$), with $h$ clipped to
    $[0, 1]$ and safe square roots so that gradients are finite at $d = 0$ and at antipodes.

    **Arguments:**

    - `a`, `b`: `(latitude, longitude)` of one point each, in degrees.
    - `radius`: sphere radius; the default 6371.0 is the mean Earth radius in km, so the
      distance is in km.

    **Returns:**

    The scalar great-circle distance (units of `radius`).

    Reference: R. W. Sinnott (1984), "Virtues of the haversine", Sky and Telescope 68(2), 159.

    **Example:**

    ```python
    london, paris = jnp.array([51.5074, -0.1278]), jnp.array([48.8566, 2.3522])
    haversine(london, paris)  # ~343.5 km
    ```
    """
    a, b = _as_points(a, b, "haversine")
    if a.shape != (2,):
        raise ValueError(
            f"haversine needs (latitude, longitude) pairs in degrees, shape (2,); got shape "
            f"{a.shape}."
        )
    check_positive(radius, "radius")
    lat1, lon1 = jnp.deg2rad(a[0]), jnp.deg2rad(a[1])
    lat2, lon2 = jnp.deg2rad(b[0]), jnp.deg2rad(b[1])
    h = (
        jnp.sin((lat2 - lat1) / 2) ** 2
        + jnp.cos(lat1) * jnp.cos(lat2) * jnp.sin((lon2 - lon1) / 2) ** 2
    )
    h = jnp.clip(h, 0.0, 1.0)
    return 2.0 * radius * jnp.arctan2(_safe_sqrt(h), _safe_sqrt(1.0 - h))


def pairwise_distances(
    coords_a: Real[ArrayLike, " n *D"],
    coords_b: Real[ArrayLike, " m *D"],
    distance: Callable[..., Array] = euclidean,
    **kwargs: Any,
) -> Float[Array, "n m"]:
    """Matrix of distances between two sets of points.

    $D_{ij} = d(a_i, b_j, **kwargs)$, computed with a double `jax.vmap` of the single-pair
    `distance`, so any callable with the signature `distance(a, b, **kwargs) -> scalar` works.

    **Arguments:**

    - `coords_a`: `(n, D)` coordinates (a 1-D array `(n,)` is read as `D = 1`).
    - `coords_b`: `(m, D)` coordinates (or `(m,)`).
    - `distance`: a single-pair distance, e.g. `euclidean`, `periodic`, `haversine`.
    - `**kwargs`: extra arguments of `distance` (e.g. `period=40.0`).

    **Returns:**

    The `(n, m)` distance matrix.

    DAPPER equivalent: `dapper.tools.localization.pairwise_distances`.

    **Example:**

    ```python
    x = jnp.arange(40.0)
    pairwise_distances(x, x, periodic, period=40.0)  # (40, 40) L96 distances
    ```
    """
    a = jnp.asarray(coords_a)
    b = jnp.asarray(coords_b)
    if a.ndim == 1:
        a = a[:, None]
    if b.ndim == 1:
        b = b[:, None]
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            "pairwise_distances needs coordinate arrays of shapes (n, D) and (m, D) with the "
            f"same D (or 1-D arrays for D = 1); got {jnp.shape(coords_a)} and "
            f"{jnp.shape(coords_b)}."
        )
    if not callable(distance):
        raise TypeError(f"distance must be a callable distance(a, b, **kwargs); got {distance!r}.")

    def row(point_a: Array) -> Array:
        return jax.vmap(lambda point_b: distance(point_a, point_b, **kwargs))(b)

    return jax.vmap(row)(a)
