"""Patches: tiling, coverage, partition of unity, blending, observation assignment."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.primitives._patches import (
    Patches,
    assign_obs_to_patches,
    blend_patches,
    blending_weights,
    create_patches,
)

# Eager JAX compiles every primitive separately; checking jitted versions costs one XLA compile
# per test instead of dozens and keeps the suite fast. Error tests call the raw functions.
blending_weights_j = eqx.filter_jit(blending_weights)
blend_patches_j = eqx.filter_jit(blend_patches)

KINDS = ["cosine", "linear", "uniform"]
GRIDS = [((40,), 10, 4), ((37,), 8, 3), ((10, 12), 4, 1), ((9, 7), (5, 3), (2, 1))]


def _real_sets(patches):
    idx, mask = np.asarray(patches.indices), np.asarray(patches.mask)
    return [set(idx[p][mask[p]].tolist()) for p in range(idx.shape[0])]


def test_1d_tiling_is_as_documented():
    patches = create_patches(40, patch_size=10, overlap=4)
    # Stride 6: starts 0, 6, ..., 30; the patch at 30 reaches the end.
    assert patches.indices.shape == (6, 10)
    np.testing.assert_array_equal(patches.lower[:, 0], [0, 6, 12, 18, 24, 30])
    np.testing.assert_array_equal(patches.upper[:, 0], [9, 15, 21, 27, 33, 39])
    sets = _real_sets(patches)
    for a, b in itertools.pairwise(sets):
        assert len(a & b) == 4  # neighbours share exactly `overlap` points


def test_clipped_last_patch_is_padded():
    patches = create_patches(37, patch_size=8, overlap=3)  # starts 0, 5, ..., 30 -> [30, 36]
    mask = np.asarray(patches.mask)
    assert mask[-1].sum() == 7 and mask[:-1].all()
    assert np.asarray(patches.indices)[-1, 7] == 0  # padding index
    np.testing.assert_array_equal(np.asarray(patches.edge_fraction)[-1, 7], 0.0)


@pytest.mark.parametrize(("shape", "size", "overlap"), GRIDS)
def test_every_point_covered_and_indices_match_numpy(shape, size, overlap):
    patches = create_patches(shape, size, overlap)
    n = int(np.prod(shape))
    sets = _real_sets(patches)
    assert set().union(*sets) == set(range(n))
    # Reference: rebuild each patch from its bounds with an explicit loop over grid points.
    grid = np.arange(n).reshape(shape)
    for p, s in enumerate(sets):
        lo = np.asarray(patches.lower[p]).astype(int)
        hi = np.asarray(patches.upper[p]).astype(int)
        expected = grid[tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))]
        assert s == set(expected.ravel().tolist())
        # C-order within the patch, as the blend and the user's gather rely on.
        real = np.asarray(patches.indices[p])[np.asarray(patches.mask[p])]
        np.testing.assert_array_equal(real, expected.ravel())


@pytest.mark.parametrize(("shape", "size", "overlap"), GRIDS)
@pytest.mark.parametrize("kind", KINDS)
def test_weights_are_a_partition_of_unity(shape, size, overlap, kind):
    patches = create_patches(shape, size, overlap)
    W = np.asarray(blending_weights_j(patches, kind))
    idx, mask = np.asarray(patches.indices), np.asarray(patches.mask)
    assert np.all(W >= 0) and np.all(W[~mask] == 0)
    total = np.zeros(patches.n_state)
    np.add.at(total, idx[mask], W[mask])
    # Normalised weights: exact up to float64 rounding of one division per entry.
    np.testing.assert_allclose(total, 1.0, rtol=1e-12)


def test_cosine_and_linear_ramps_sum_to_one_before_normalisation():
    # For two neighbours the raw ramps are complementary, so the blend is smooth: inside the
    # overlap one weight rises while the other falls, strictly between 0 and 1.
    patches = create_patches(40, 10, 4)
    t = np.asarray(patches.edge_fraction)[..., 0]
    for kind, f in [("linear", lambda u: u), ("cosine", lambda u: np.sin(np.pi * u / 2) ** 2)]:
        W = np.asarray(blending_weights_j(patches, kind))
        np.testing.assert_allclose(W, f(t), rtol=1e-12)  # no renormalisation needed in 1-D
        overlap = W[0, 6:10]  # points 6..9 are shared by patches 0 and 1
        assert np.all((overlap > 0) & (overlap < 1)) and np.all(np.diff(overlap) < 0)
        np.testing.assert_allclose(overlap + W[1, 0:4], 1.0, rtol=1e-12)


@pytest.mark.parametrize(("shape", "size", "overlap"), GRIDS)
@pytest.mark.parametrize("kind", KINDS)
def test_blending_identical_values_returns_them(shape, size, overlap, kind):
    patches = create_patches(shape, size, overlap)
    rng = np.random.default_rng(0)
    idx = np.asarray(patches.indices)
    state = rng.standard_normal(patches.n_state)
    per_patch = jnp.asarray(state[idx])  # every patch holds the true values
    np.testing.assert_allclose(blend_patches_j(per_patch, patches, weights=kind), state, rtol=1e-12)
    # With an ensemble (batch) axis: (n_patches, N_e, L) -> (N_e, N_x).
    ens = rng.standard_normal((5, patches.n_state))
    per_patch_ens = jnp.asarray(np.moveaxis(ens[:, idx], 0, 1))
    np.testing.assert_allclose(
        blend_patches_j(per_patch_ens, patches, weights=kind), ens, rtol=1e-12
    )


def test_blend_float32():
    # Weights are cast to the values' dtype: float32 in, float32 out, exact to float32 rounding.
    patches = create_patches((10, 12), 4, 1)
    state = np.random.default_rng(5).standard_normal(120).astype(np.float32)
    out = blend_patches_j(jnp.asarray(state[np.asarray(patches.indices)]), patches)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, state, rtol=1e-5, atol=1e-6)


def test_blend_is_weighted_average_and_ignores_padding():
    patches = create_patches(37, 8, 3)
    W = np.asarray(blending_weights_j(patches, "cosine"))
    idx, mask = np.asarray(patches.indices), np.asarray(patches.mask)
    rng = np.random.default_rng(1)
    values = rng.standard_normal(idx.shape)
    values[~mask] = np.nan  # padding may hold garbage
    expected = np.zeros(37)
    for p in range(idx.shape[0]):
        for k in range(idx.shape[1]):
            if mask[p, k]:
                expected[idx[p, k]] += W[p, k] * values[p, k]
    got = blend_patches_j(jnp.asarray(values), patches, n_state=37)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_blend_with_user_weights_and_jit():
    patches = create_patches((10, 12), 4, 1)
    raw = jnp.asarray(np.random.default_rng(2).uniform(0.5, 2.0, patches.indices.shape))
    state = jnp.arange(120.0)
    out = jax.jit(lambda v, p, w: blend_patches(v, p, weights=w))(
        state[patches.indices], patches, raw
    )
    np.testing.assert_allclose(out, state, rtol=1e-12)


def test_vmapped_per_patch_analysis_round_trip():
    # The intended use: gather, run a per-patch function under vmap, blend back.
    patches = create_patches(40, 10, 4)
    X = jnp.asarray(np.random.default_rng(3).standard_normal((6, 40)))

    def local(idx):
        Xp = X[:, idx]
        return 2.0 * Xp + 1.0  # any pointwise analysis

    out = jax.jit(lambda i: blend_patches(jax.vmap(local)(i), patches))(patches.indices)
    np.testing.assert_allclose(out, 2.0 * X + 1.0, rtol=1e-12)


def test_patches_is_a_pytree():
    patches = create_patches(20, 5, 1)
    leaves = jax.tree_util.tree_leaves(patches)
    assert len(leaves) == 5  # indices, mask, edge_fraction, lower, upper
    assert isinstance(eqx.filter_jit(lambda p: p)(patches), Patches)


def np_assign(coords, lower, upper, halo, period=None):
    """Loop reference: observation j belongs to patch p if it is within `halo` of the patch
    box on every axis (wrapping on periodic axes)."""
    members = []
    for lo, hi in zip(lower, upper, strict=True):
        chosen = []
        for j, c in enumerate(coords):
            ok = True
            for d in range(len(c)):
                if period is None:
                    dist = max(lo[d] - c[d], c[d] - hi[d], 0.0)
                else:
                    dist = min(
                        max(lo[d] - (c[d] + k * period), (c[d] + k * period) - hi[d], 0.0)
                        for k in (-1, 0, 1)
                    )
                ok = ok and dist <= halo
            if ok:
                chosen.append(j)
        members.append(chosen)
    return members


@pytest.mark.parametrize(
    ("shape", "size", "overlap", "halo", "period"),
    [((40,), 10, 2, 3.0, None), ((40,), 10, 2, 3.0, 40.0), ((10, 12), 4, 1, 1.5, None)],
    ids=["1d", "1d-periodic", "2d"],
)
def test_obs_assignment_matches_loop(shape, size, overlap, halo, period):
    patches = create_patches(shape, size, overlap)
    rng = np.random.default_rng(4)
    coords = rng.uniform(0, 1, (25, len(shape))) * (np.array(shape) - 1)
    obs_idx, obs_mask = assign_obs_to_patches(
        coords if len(shape) > 1 else coords[:, 0], patches, halo=halo, period=period
    )
    expected = np_assign(coords, np.asarray(patches.lower), np.asarray(patches.upper), halo, period)
    assert obs_idx.shape[1] == max(len(e) for e in expected)  # tight padding when concrete
    for p, e in enumerate(expected):
        got = np.asarray(obs_idx[p])[np.asarray(obs_mask[p])]
        np.testing.assert_array_equal(got, e)


def test_periodic_halo_wraps_to_the_first_patch():
    patches = create_patches(40, 10, 0)
    obs_idx, obs_mask = assign_obs_to_patches(jnp.array([38.0]), patches, halo=3.0, period=40.0)
    # Patch [0, 9] sees the observation at 38 (distance 2 across the boundary); so does [30, 39].
    np.testing.assert_array_equal(np.asarray(obs_mask)[:, 0], [True, False, False, True])


def test_obs_assignment_under_jit_and_max_obs():
    patches = create_patches(40, 10, 2)
    coords = jnp.arange(0.0, 40.0, 2.0)
    f = jax.jit(lambda c: assign_obs_to_patches(c, patches, halo=2.0, max_obs=12))
    idx, mask = f(coords)
    ref_idx, ref_mask = assign_obs_to_patches(coords, patches, halo=2.0)
    k = ref_idx.shape[1]
    np.testing.assert_array_equal(mask[:, :k], ref_mask)
    np.testing.assert_array_equal(np.where(ref_mask, idx[:, :k], 0), np.where(ref_mask, ref_idx, 0))
    assert not np.any(np.asarray(mask)[:, k:])
    with pytest.raises(ValueError, match="max_obs"):
        assign_obs_to_patches(coords, patches, halo=2.0, max_obs=2)
    # Under jit the counts are unknown at trace time: the overflow is caught at run time.
    g = eqx.filter_jit(lambda c: assign_obs_to_patches(c, patches, halo=2.0, max_obs=2))
    with pytest.raises(eqx.EquinoxRuntimeError, match="max_obs"):
        jax.block_until_ready(g(coords))


def test_bad_input():
    with pytest.raises(ValueError, match="overlap"):
        create_patches(40, 10, 10)
    with pytest.raises(ValueError, match="overlap"):
        create_patches(40, 10, -1)
    with pytest.raises(ValueError, match="grid_shape"):
        create_patches((4, 4, 4), 2, 0)
    with pytest.raises(ValueError, match="patch_size"):
        create_patches((10, 10), (2, 2, 2), 0)
    patches = create_patches((10, 12), 4, 1)
    with pytest.raises(ValueError, match="obs_coords"):
        assign_obs_to_patches(jnp.ones((5, 3)), patches, halo=1.0)
    with pytest.raises(ValueError, match="halo"):
        assign_obs_to_patches(jnp.ones((5, 2)), patches, halo=-1.0)
    with pytest.raises(ValueError, match="patch_values"):
        blend_patches(jnp.ones((3, 16)), patches)
    with pytest.raises(ValueError, match="n_state"):
        blend_patches(jnp.ones((patches.n_patches, 16)), patches, n_state=7)
    with pytest.raises(ValueError, match="kind"):
        blending_weights(patches, "gaussian")
