"""Domain decomposition into overlapping patches.

A regular 1-D or 2-D grid is cut into rectangular patches that overlap their neighbours. Each
patch is a padded array of flattened (C-order) state indices plus a mask, so all patches have
the same shape and a per-patch analysis can be ``jax.vmap``-ed over them; observations are
assigned to patches (with a halo) the same way; and the per-patch results are blended back into
one state with partition-of-unity weights that ramp smoothly across the overlaps.

Intended use, a per-patch (local) ETKF::

    patches = create_patches((64, 64), patch_size=16, overlap=4)
    obs_idx, obs_mask = assign_obs_to_patches(obs_coords, patches, halo=4.0)

    def local_analysis(state_idx, obs_idx, obs_mask):
        Xp = forecast[:, state_idx]                   # (N_e, L) patch ensemble
        yp = jnp.where(obs_mask, y[obs_idx], jnp.nan)  # padded obs are "missing"
        Yp = Yf[:, obs_idx]                           # (N_e, max_obs)
        return etkf_update(Xp, Yp, yp, r[obs_idx])    # (N_e, L)

    local = jax.vmap(local_analysis)(patches.indices, obs_idx, obs_mask)  # (n_patches, N_e, L)
    analysis = blend_patches(local, patches)          # (N_e, N_x)

Padded state entries are real indices (0) whose results the blend ignores; padded observations
must be treated as missing (NaN), which every filterax filter supports.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Real

__all__ = [
    "Patches",
    "assign_obs_to_patches",
    "blend_patches",
    "blending_weights",
    "create_patches",
]


class Patches(eqx.Module):
    """Static index sets of overlapping rectangular patches of a regular grid.

    Built by `create_patches`; a pytree, so it can be passed through `jax.jit`.

    **Fields:**

    - `indices`: `(n_patches, L)` flattened (C-order) state indices of each patch, padded with
      0 where a boundary patch is smaller than `L = prod(patch_size)`.
    - `mask`: `(n_patches, L)` True for real entries, False for padding.
    - `edge_fraction`: `(n_patches, L, D)` per-axis position in the overlap ramp: 1 in the
      patch interior and at the domain boundary, rising as $(k + 1)/(o + 1)$ over the $o$
      overlap points at an interior edge (used by `blending_weights`).
    - `lower`, `upper`: `(n_patches, D)` inclusive grid-index bounds of each patch.
    - `grid_shape`, `patch_size`, `overlap`: the (static) construction parameters.
    """

    indices: Int[Array, "n_patches L"]
    mask: Bool[Array, "n_patches L"]
    edge_fraction: Float[Array, "n_patches L D"]
    lower: Float[Array, "n_patches D"]
    upper: Float[Array, "n_patches D"]
    grid_shape: tuple[int, ...] = eqx.field(static=True)
    patch_size: tuple[int, ...] = eqx.field(static=True)
    overlap: tuple[int, ...] = eqx.field(static=True)

    @property
    def n_state(self) -> int:
        """Number of grid points, `prod(grid_shape)`."""
        return math.prod(self.grid_shape)

    @property
    def n_patches(self) -> int:
        """Number of patches."""
        return self.indices.shape[0]


def _per_axis(value: Any, ndim: int, name: str) -> tuple[int, ...]:
    values = (value,) * ndim if isinstance(value, int | np.integer) else tuple(value)
    if len(values) != ndim or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values
    ):
        raise ValueError(
            f"{name} must be a Python int or a tuple of {ndim} ints (one per grid axis); got "
            f"{value!r}."
        )
    return tuple(int(v) for v in values)


def _axis_tiling(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    # Patches start every (size - overlap) points; the last one is clipped at the boundary and
    # always reaches past its neighbour (its start is the first with start + size >= n).
    stride = size - overlap
    starts = [0]
    while starts[-1] + size < n:
        starts.append(starts[-1] + stride)
    return [(s, min(s + size, n) - 1) for s in starts]


def _ramp(n: int, lo: int, hi: int, overlap: int) -> np.ndarray:
    points = np.arange(lo, hi + 1)
    left = np.minimum(1.0, (points - lo + 1) / (overlap + 1)) if lo > 0 else np.ones(points.size)
    right = (
        np.minimum(1.0, (hi - points + 1) / (overlap + 1)) if hi < n - 1 else np.ones(points.size)
    )
    return np.minimum(left, right)


def create_patches(
    grid_shape: int | tuple[int, ...],
    patch_size: int | tuple[int, ...],
    overlap: int | tuple[int, ...] = 0,
) -> Patches:
    """Cut a regular 1-D or 2-D grid into overlapping rectangular patches.

    Along each axis of length $n$, patches of `patch_size` $s$ points start every $s - o$
    points ($o$ = `overlap`), $P_k = \\{k(s-o), \\dots, \\min(k(s-o) + s, n) - 1\\}$, until one
    reaches the boundary (that last patch may be shorter). A 2-D grid gets the Cartesian
    product of the per-axis tilings. Every grid point lies in at least one patch; neighbours
    share exactly $o$ points along each axis. The construction is pure Python/numpy on static
    shapes, so call it outside `jax.jit` (the result is a pytree that can be passed in).

    **Arguments:**

    - `grid_shape`: `n` or `(n_0, n_1)`; state vectors are the C-order flattening of the grid.
    - `patch_size`: points per patch along each axis (an int for all axes, or a tuple); values
      larger than the grid are clipped to it.
    - `overlap`: points shared by neighbouring patches along each axis, $0 \\le o < s$.

    **Returns:**

    A `Patches` with `(n_patches, L)` padded indices and mask, `L = prod(patch_size)`.

    DAPPER equivalent: `rectangular_partitioning(shape, steps)` (no overlap) in
    `dapper.tools.localization`.

    **Example:**

    ```python
    patches = create_patches((40,), patch_size=10, overlap=4)  # starts 0, 6, 12, ..., 30
    patches.indices.shape  # (6, 10)
    ```
    """
    shape = (grid_shape,) if isinstance(grid_shape, int | np.integer) else tuple(grid_shape)
    ndim = len(shape)
    if ndim not in (1, 2) or not all(
        isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 1 for n in shape
    ):
        raise ValueError(
            f"grid_shape must be a positive int or a tuple of 1 or 2 positive ints; got "
            f"{grid_shape!r}."
        )
    shape = tuple(int(n) for n in shape)
    sizes = _per_axis(patch_size, ndim, "patch_size")
    overlaps = _per_axis(overlap, ndim, "overlap")
    if any(s < 1 for s in sizes):
        raise ValueError(f"patch_size must be >= 1 along every axis; got {sizes}.")
    sizes = tuple(min(s, n) for s, n in zip(sizes, shape, strict=True))
    if any(o < 0 or o >= s for o, s in zip(overlaps, sizes, strict=True)):
        raise ValueError(
            f"overlap must satisfy 0 <= overlap < patch_size on every axis; got overlap="
            f"{overlaps} with patch_size={sizes} (after clipping to the grid {shape})."
        )
    length = math.prod(sizes)
    tilings = [_axis_tiling(n, s, o) for n, s, o in zip(shape, sizes, overlaps, strict=True)]

    indices, masks, fractions, lowers, uppers = [], [], [], [], []
    for bounds in itertools.product(*tilings):
        axes = [np.arange(lo, hi + 1) for lo, hi in bounds]
        ramps = [
            _ramp(n, lo, hi, o) for n, (lo, hi), o in zip(shape, bounds, overlaps, strict=True)
        ]
        grid_points = np.meshgrid(*axes, indexing="ij")
        flat = np.ravel_multi_index(tuple(g.ravel() for g in grid_points), shape)
        frac = np.stack([r.ravel() for r in np.meshgrid(*ramps, indexing="ij")], axis=-1)
        count = flat.size
        indices.append(np.pad(flat, (0, length - count)))
        masks.append(np.arange(length) < count)
        fractions.append(np.pad(frac, ((0, length - count), (0, 0))))
        lowers.append([lo for lo, _ in bounds])
        uppers.append([hi for _, hi in bounds])

    return Patches(
        indices=jnp.asarray(np.stack(indices), dtype=jnp.int32),
        mask=jnp.asarray(np.stack(masks)),
        edge_fraction=jnp.asarray(np.stack(fractions), dtype=float),
        lower=jnp.asarray(np.asarray(lowers, dtype=float)),
        upper=jnp.asarray(np.asarray(uppers, dtype=float)),
        grid_shape=shape,
        patch_size=sizes,
        overlap=overlaps,
    )


def blending_weights(
    patches: Patches, kind: str | Float[ArrayLike, "n_patches L"] = "cosine"
) -> Float[Array, "n_patches L"]:
    """Partition-of-unity weights for blending overlapping patches.

    Raw weights $w_p(i) = \\prod_d f(t_{p,d}(i))$ from the per-axis ramp position $t$
    (`Patches.edge_fraction`), with $f(t) = \\sin^2(\\pi t / 2)$ (`"cosine"`), $f(t) = t$
    (`"linear"`) or $f = 1$ (`"uniform"`: plain averaging in overlaps), or user-given raw
    weights; then normalised so that $\\sum_{p \\ni i} W_p(i) = 1$ at every grid point. For two
    neighbours sharing $o$ points the cosine and linear ramps already sum to 1, so the
    normalisation only matters at patch corners and for user weights. Padding gets weight 0.

    **Arguments:**

    - `patches`: from `create_patches`.
    - `kind`: `"cosine"`, `"linear"`, `"uniform"`, or a non-negative `(n_patches, L)` array of
      raw weights (positive at every real entry covering some point).

    **Returns:**

    The normalised `(n_patches, L)` weights.

    **Example:**

    ```python
    W = blending_weights(create_patches(40, 10, 4))  # W summed per grid point is 1
    ```
    """
    t = patches.edge_fraction
    if isinstance(kind, str):
        if kind == "cosine":
            raw = jnp.prod(jnp.sin(0.5 * jnp.pi * t) ** 2, axis=-1)
        elif kind == "linear":
            raw = jnp.prod(t, axis=-1)
        elif kind == "uniform":
            raw = jnp.ones(t.shape[:-1], dtype=t.dtype)
        else:
            raise ValueError(
                f"kind must be 'cosine', 'linear', 'uniform' or an (n_patches, L) array; got "
                f"{kind!r}."
            )
    else:
        raw = jnp.asarray(kind)
        if raw.shape != patches.indices.shape:
            raise ValueError(
                f"explicit blending weights must have shape {patches.indices.shape} "
                f"(n_patches, L); got {raw.shape}."
            )
    raw = jnp.where(patches.mask, raw, 0.0)
    total = jnp.zeros(patches.n_state, dtype=raw.dtype).at[patches.indices].add(raw)
    denom = total[patches.indices]
    covered = patches.mask & (denom > 0)
    return jnp.where(covered, raw / jnp.where(covered, denom, 1.0), 0.0)


def blend_patches(
    patch_values: Float[Array, "n_patches *batch L"],
    patches: Patches,
    n_state: int | None = None,
    *,
    weights: str | Float[ArrayLike, "n_patches L"] = "cosine",
) -> Float[Array, "*batch n_state"]:
    """Assemble a full state from per-patch values, blending overlaps smoothly.

    $x_i = \\sum_{p \\ni i} W_p(i)\\, v_p(i)$ with the partition-of-unity weights of
    `blending_weights` (so identical per-patch values are returned unchanged). Padding entries
    are ignored, even if they hold NaN.

    **Arguments:**

    - `patch_values`: `(n_patches, *batch, L)`, e.g. `(n_patches, N_e, L)` per-patch analysis
      ensembles from a `jax.vmap` over patches, or `(n_patches, L)` per-patch means.
    - `patches`: from `create_patches`.
    - `n_state`: optional check that the grid has this many points.
    - `weights`: `"cosine"` (default), `"linear"`, `"uniform"` or raw `(n_patches, L)` weights.

    **Returns:**

    The `(*batch, n_state)` blended array, e.g. the `(N_e, N_x)` analysis ensemble.

    **Example:**

    ```python
    local = jax.vmap(local_analysis)(patches.indices, obs_idx, obs_mask)  # (P, N_e, L)
    Xa = blend_patches(local, patches)                                    # (N_e, N_x)
    ```
    """
    if not isinstance(patches, Patches):
        raise TypeError(f"patches must come from create_patches; got {type(patches).__name__}.")
    if n_state is not None and n_state != patches.n_state:
        raise ValueError(
            f"n_state={n_state} does not match the patched grid {patches.grid_shape} "
            f"({patches.n_state} points)."
        )
    values = jnp.asarray(patch_values)
    n_patches, length = patches.indices.shape
    if values.ndim < 2 or values.shape[0] != n_patches or values.shape[-1] != length:
        raise ValueError(
            f"patch_values must have shape (n_patches, *batch, L) = ({n_patches}, ..., "
            f"{length}); got {values.shape}."
        )
    W = blending_weights(patches, weights).astype(values.dtype)
    values = jnp.moveaxis(values, 0, -2)  # (*batch, n_patches, L)
    batch = values.shape[:-2]
    lead = (1,) * len(batch)
    contrib = jnp.where(
        patches.mask.reshape(lead + patches.mask.shape), values * W.reshape(lead + W.shape), 0.0
    )
    flat = contrib.reshape((*batch, n_patches * length))
    out = jnp.zeros((*batch, patches.n_state), dtype=values.dtype)
    return out.at[..., patches.indices.reshape(-1)].add(flat)


def assign_obs_to_patches(
    obs_coords: Real[ArrayLike, " N_y *D"],
    patches: Patches,
    *,
    halo: float | Real[ArrayLike, ""] = 0.0,
    max_obs: int | None = None,
    period: float | tuple[float, ...] | None = None,
) -> tuple[Int[Array, "n_patches max_obs"], Bool[Array, "n_patches max_obs"]]:
    """Observations that each patch's local analysis should use.

    Observation $j$ at grid-index coordinates $c_j$ belongs to patch $p$ when, on every axis,
    its distance to the patch's index interval $[\\ell_{p,d}, u_{p,d}]$ is at most `halo`
    (a box halo; on a periodic axis the distance wraps around). Coordinates are in grid-index
    units (an observation of state point $k$ of a 1-D grid sits at $c = k$; use
    $(x - x_0)/\\Delta x$ for physical coordinates). Each patch's observation indices are
    listed in increasing order and padded with 0 to a common length `max_obs`.

    **Arguments:**

    - `obs_coords`: `(N_y, D)` observation coordinates (`(N_y,)` for a 1-D grid).
    - `patches`: from `create_patches`.
    - `halo`: how far outside a patch observations are still used (grid points); typically
      the localisation radius.
    - `max_obs`: padded length (static). Default: the largest patch count when the inputs are
      concrete, else `N_y`. A count above `max_obs` raises (at trace time for concrete inputs,
      through `eqx.error_if` under `jax.jit`).
    - `period`: optional domain length (scalar or per axis) for periodic axes, e.g. `40` for
      Lorenz-96.

    **Returns:**

    `(obs_indices, obs_mask)`, both `(n_patches, max_obs)`.

    **Example:**

    ```python
    patches = create_patches(40, patch_size=10, overlap=2)
    obs_idx, obs_mask = assign_obs_to_patches(jnp.arange(0.0, 40.0, 2.0), patches, halo=3.0,
                                              period=40.0)
    ```
    """
    if not isinstance(patches, Patches):
        raise TypeError(f"patches must come from create_patches; got {type(patches).__name__}.")
    coords = jnp.asarray(obs_coords)
    ndim = len(patches.grid_shape)
    if coords.ndim == 1 and ndim == 1:
        coords = coords[:, None]
    if coords.ndim != 2 or coords.shape[1] != ndim:
        raise ValueError(
            f"obs_coords must have shape (N_y, {ndim}) for a {ndim}-D grid (or (N_y,) for 1-D); "
            f"got {jnp.shape(obs_coords)}."
        )
    if jnp.ndim(halo) != 0:
        raise ValueError(f"halo must be a scalar; got shape {jnp.shape(halo)}.")
    with contextlib.suppress(TypeError, jax.errors.ConcretizationTypeError):  # traced halo
        if float(halo) < 0:
            raise ValueError(f"halo must be non-negative; got {halo}.")
    n_y = coords.shape[0]
    dtype = jnp.result_type(coords, patches.lower, float)
    length = None
    if period is not None:
        length = jnp.broadcast_to(jnp.asarray(period, dtype=dtype), (ndim,))
    member = _membership(
        coords.astype(dtype), patches.lower, patches.upper, jnp.asarray(halo, dtype=dtype), length
    )
    counts = jnp.sum(member, axis=1)

    try:
        concrete_max = int(np.max(np.asarray(counts)))
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        concrete_max = None
    if max_obs is None:
        max_obs = n_y if concrete_max is None else concrete_max
        max_obs = max(max_obs, 1)
    elif not isinstance(max_obs, int) or isinstance(max_obs, bool) or max_obs < 1:
        raise ValueError(f"max_obs must be a positive Python int; got {max_obs!r}.")
    elif concrete_max is not None and concrete_max > max_obs:
        raise ValueError(
            f"a patch has {concrete_max} observations but max_obs={max_obs}; pass "
            f"max_obs >= {concrete_max} (or leave it None)."
        )

    obs_indices = _select(member, max_obs)
    obs_mask = jnp.arange(max_obs)[None, :] < counts[:, None]
    if concrete_max is None:
        obs_indices = eqx.error_if(
            obs_indices,
            jnp.any(counts > max_obs),
            "assign_obs_to_patches: a patch has more observations than max_obs; raise max_obs.",
        )
    return obs_indices, obs_mask


# The two array stages of assign_obs_to_patches are jitted so that eager calls (the common way
# to build the static assignment once, outside the assimilation loop) compile once per shape
# rather than once per primitive; the concrete counts are still read back to size the padding.
@jax.jit
def _membership(
    coords: Array, lower: Array, upper: Array, halo: Array, length: Array | None
) -> Array:
    lower = lower.astype(coords.dtype)[:, None, :]  # (P, 1, D)
    upper = upper.astype(coords.dtype)[:, None, :]
    c = coords[None, :, :]  # (1, N_y, D)
    if length is None:
        dist = jnp.maximum(jnp.maximum(lower - c, c - upper), 0.0)
    else:
        period = length[None, None, :]
        c = jnp.remainder(c, period)
        inside = (c >= lower) & (c <= upper)
        outside = jnp.minimum(jnp.remainder(lower - c, period), jnp.remainder(c - upper, period))
        dist = jnp.where(inside, 0.0, outside)
    return jnp.all(dist <= halo, axis=-1)  # (P, N_y)


@functools.partial(jax.jit, static_argnums=1)
def _select(member: Array, max_obs: int) -> Array:
    def select(row: Array) -> Array:
        return jnp.nonzero(row, size=max_obs, fill_value=0)[0]

    return jax.vmap(select)(member).astype(jnp.int32)
