r"""Splitting a per-grid-point computation across a `jax.sharding.Mesh` (docs/conventions.md).

Grid points are independent in a localised analysis, so the grid axis is simply partitioned:
`jax.shard_map` gives every device a contiguous block of grid points (padded to a multiple of
the device count) together with a replicated copy of the shared inputs (the observations and
their whitened anomalies), and each device runs the chunked local analyses on its block. No
communication happens inside the map; the result comes back sharded along the grid axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from ._local import grid_map

__all__ = ["map_over_grid", "mesh_axes"]


def mesh_axes(mesh: Mesh, mesh_axis: str | tuple[str, ...] | None, owner: str) -> tuple[str, ...]:
    """The mesh axes the grid is split over (all of them when `mesh_axis` is ``None``)."""
    if mesh_axis is None:
        return tuple(mesh.axis_names)
    axes = (mesh_axis,) if isinstance(mesh_axis, str) else tuple(mesh_axis)
    unknown = [a for a in axes if a not in mesh.axis_names]
    if unknown:
        raise ValueError(
            f"{owner}: mesh_axis {unknown} not in the mesh's axes {tuple(mesh.axis_names)}. "
            "Pass one of the mesh's axis names (or None to use every axis)."
        )
    return axes


def map_over_grid(
    point_fn: Callable[[Any, Any], Any],
    per_point: Any,
    shared: Any,
    *,
    chunk_size: int | None,
    mesh: Mesh | None = None,
    axes: tuple[str, ...] = (),
) -> Any:
    """``point_fn(point, shared)`` for every grid point (leading axis of `per_point`).

    Without a mesh: `grid_map` (vmapped, optionally chunked) on the default device. With a mesh:
    the same inside `jax.shard_map`, the grid axis split over `axes` and `shared` replicated;
    the output is sharded along the grid axis.
    """

    def run(block: Any, common: Any) -> Any:
        return grid_map(lambda point: point_fn(point, common), block, chunk_size)

    if mesh is None:
        return run(per_point, shared)
    n_points = jax.tree_util.tree_leaves(per_point)[0].shape[0]
    n_devices = math.prod(mesh.shape[a] for a in axes)
    pad = (-n_points) % n_devices
    if pad:
        # Pad with copies of the last point; their results are dropped below.
        per_point = jax.tree_util.tree_map(
            lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0), per_point
        )
    grid_spec = PartitionSpec(axes)
    out = jax.shard_map(
        run,
        mesh=mesh,
        in_specs=(grid_spec, PartitionSpec()),
        out_specs=grid_spec,
        check_vma=False,
    )(per_point, shared)
    if pad:
        out = jax.tree_util.tree_map(lambda x: x[:n_points], out)
    return out
