r"""Local-observation selection and chunked grid maps for localised (LETKF-type) analyses.

A local analysis at grid point ``i`` uses a fixed number ``L`` of candidate observations, so
every shape is static and the per-point analyses batch with `jax.vmap`. Four ways to choose the
candidates (`ObsSelector`, one per analysis):

- ``"all"``: every observation (``L = N_y``); ``O(N_x N_y)`` distances. Exact for any taper.
- ``"table"``: a user-supplied neighbour table ``(N_x, L)`` of observation indices (``-1``
  pads); ``O(N_x L)``.
- ``"window"``: 1-D coordinates (regular or not, periodic or not). The *observed* sites are
  sorted once (``O(N_y log N_y)``; missing ones are sorted to the end and never used); for each
  point ``jnp.searchsorted`` finds its place and the ``L`` nearest are taken among the ``2L``
  sorted neighbours around it, indexed modulo the number of observed sites so a periodic domain
  wraps around. In 1-D the ``L`` nearest sites (for the euclidean distance or its periodic
  minimum image) are contiguous in (circular) sorted order and contain a neighbour of the
  point, so they always lie in that window: the result equals ``"topk"`` (up to ties at equal
  distance) at ``O(N_x L log L)``.
- ``"topk"``: generic (any dimension, any distance, e.g. haversine): distances to all
  observations and `jax.lax.top_k`; ``O(N_x N_y)`` work but only ``O(chunk N_y)`` memory when
  chunked.

Missing observations are ranked last (distance ``+inf``) or, in ``"window"``, left out of the
sorted sites, so they never displace observed ones: with NaN observations every mode selects
exactly what it would select for the observed subset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

__all__ = ["ObsSelector", "grid_map", "safe_sqrt"]

SELECTION_MODES = ("auto", "all", "window", "topk")


def safe_sqrt(x: Array) -> Array:
    """``sqrt(max(x, 0))`` with derivative 0 (not ``inf``/NaN) where ``x <= 0``."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _point_distances(
    distance: Callable[..., Array], point: Float[Array, " D"], others: Float[Array, "m D"]
) -> Float[Array, " m"]:
    return jax.vmap(distance, in_axes=(None, 0))(point, others)


def _nearest(rank_distance: Float[Array, " m"], n_local: int) -> Int[Array, " L"]:
    # top_k of the negated distance: the L smallest, in increasing order.
    _, positions = lax.top_k(-rank_distance, n_local)
    return positions


class ObsSelector(eqx.Module):
    r"""Chooses the ``L`` candidate observations of one grid point (see the module docstring).

    Built once per analysis by `ObsSelector.build`; `select` is vmapped over grid points.

    **Fields:**

    - `mode`: ``"all"``, ``"table"``, ``"window"`` or ``"topk"`` (static).
    - `n_local`: ``L`` (static).
    - `distance`: the single-pair distance (static callable).
    - `obs_coords`: ``(N_y, D)``; `observed`: the ``(N_y,)`` not-NaN mask.
    - `sorted_coords`, `order`: the sorted 1-D observation coordinates and their permutation
        (``"window"`` only).
    """

    mode: str = eqx.field(static=True)
    n_local: int = eqx.field(static=True)
    distance: Callable[..., Array] = eqx.field(static=True)
    obs_coords: Float[Array, "N_y D"]
    observed: Bool[Array, " N_y"]
    sorted_coords: Float[Array, " N_y"] | None = None
    order: Int[Array, " N_y"] | None = None

    @classmethod
    def build(
        cls,
        selection: str,
        max_local_obs: int | None,
        distance: Callable[..., Array],
        obs_coords: Float[Array, "N_y D"],
        observed: Bool[Array, " N_y"],
        table: Int[Array, "N_x L"] | None,
    ) -> ObsSelector:
        """Resolve ``selection="auto"`` and the static ``L`` for these observations."""
        n_y, dim = obs_coords.shape
        if table is not None:
            return cls("table", table.shape[1], distance, obs_coords, observed)
        if selection == "all" or max_local_obs is None or max_local_obs >= n_y:
            return cls("all", n_y, distance, obs_coords, observed)
        n_local = max_local_obs
        mode = selection
        if selection == "auto":
            mode = "window" if dim == 1 else "topk"
        if mode == "window" and 2 * n_local >= n_y:
            # The 2L-window would revisit observations (indices modulo N_y): use top_k.
            mode = "topk"
        if mode == "window":
            # Missing sites sort to the end (+inf) and are excluded by the modulus below.
            line = jnp.where(observed, obs_coords[:, 0], jnp.inf)
            order = jnp.argsort(line)
            return cls("window", n_local, distance, obs_coords, observed, line[order], order)
        return cls("topk", n_local, distance, obs_coords, observed)

    def select(
        self, point: Float[Array, " D"], table_row: Int[Array, " L"] | None = None
    ) -> tuple[Int[Array, " L"], Float[Array, " L"], Bool[Array, " L"]]:
        """Indices, distances and validity (observed, not padding) of the local candidates."""
        n_y = self.obs_coords.shape[0]
        if self.mode == "all":
            indices = jnp.arange(n_y)
            dist = _point_distances(self.distance, point, self.obs_coords)
            return indices, dist, self.observed
        if self.mode == "table":
            assert table_row is not None
            valid = (table_row >= 0) & (table_row < n_y)
            indices = jnp.where(valid, table_row, 0)
            dist = _point_distances(self.distance, point, self.obs_coords[indices])
            return indices, dist, valid & self.observed[indices]
        if self.mode == "window":
            assert self.sorted_coords is not None and self.order is not None
            n_observed = jnp.maximum(jnp.sum(self.observed), 1)
            position = jnp.searchsorted(self.sorted_coords, point[0])
            steps = jnp.arange(2 * self.n_local)
            candidates = self.order[jnp.mod(position - self.n_local + steps, n_observed)]
            # With fewer than 2L observed sites the window wraps onto itself: keep the first
            # n_observed (distinct) candidates only.
            observed = self.observed[candidates] & (steps < n_observed)
        else:
            candidates = jnp.arange(n_y)
            observed = self.observed
        dist = _point_distances(self.distance, point, self.obs_coords[candidates])
        rank = jnp.where(observed, dist, jnp.inf)
        chosen = _nearest(rank, self.n_local)
        return candidates[chosen], dist[chosen], observed[chosen]


def grid_map(fn: Callable[[Any], Any], per_point: Any, chunk_size: int | None) -> Any:
    """Map ``fn`` over the leading (grid) axis of the pytree `per_point`.

    ``chunk_size=None``: one `jax.vmap` over all points. Otherwise `jax.lax.map` over chunks of
    `chunk_size` vmapped points (``lax.map(..., batch_size=chunk_size)``; a remainder chunk is
    vmapped separately), so peak memory is that of one chunk whatever ``N_x``.
    """
    if chunk_size is None:
        return jax.vmap(fn)(per_point)
    return lax.map(fn, per_point, batch_size=chunk_size)
