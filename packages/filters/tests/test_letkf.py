"""LETKF against independent references: the global ETKF (infinite radius), a numpy local ETKF
with tapered R^{-1}, and a numpy transcription of DAPPER's ``local_analyses`` on the periodic
Lorenz-96 ring; plus the equivalences its implementation relies on (chunked == unchunked,
L x L Gram == N_e x N_e, window == top-k == all, NaN == observed subset, neighbour table).

All comparisons in float64 are algebraic identities (round-off ~1e-14 on O(1) data); 1e-9
leaves room for the small eigen/Cholesky problems.
"""

import functools
import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import lineax as lx
import numpy as np
import pytest

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.filters._letkf import letkf_local_update


def _load_helpers():
    # --import-mode=importlib keeps tests/ off sys.path; load helpers.py under a unique name.
    name = "filterax_filters_tests_helpers"
    if name not in sys.modules:
        path = pathlib.Path(__file__).with_name("helpers.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


helpers = _load_helpers()

TOL64 = 1e-9
PERIODIC40 = functools.partial(fxp.periodic, period=40.0)


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


# --- numpy references ------------------------------------------------------------------------


def np_gaspari_cohn(d, c):
    """Gaspari & Cohn (1999) eq. (4.10) with half-width ``c`` (support ``2c``), numpy."""
    z = np.abs(np.asarray(d, dtype=np.float64)) / c
    out = np.zeros_like(z)
    a = z <= 1
    out[a] = -0.25 * z[a] ** 5 + 0.5 * z[a] ** 4 + 0.625 * z[a] ** 3 - 5 / 3 * z[a] ** 2 + 1
    b = (z > 1) & (z <= 2)
    zb = z[b]
    out[b] = zb**5 / 12 - 0.5 * zb**4 + 0.625 * zb**3 + 5 / 3 * zb**2 - 5 * zb + 4 - 2 / (3 * zb)
    return out


def np_local_etkf(E, Eo, r, y, rho):
    """Per-grid-point ETKF with tapered R^{-1}: ``R_loc^{-1} = diag(rho / r)`` (Hunt 2007).

    ``rho`` is ``(N_x, N_y)``; observations with ``rho = 0`` or NaN ``y`` are dropped.
    Transform by an eigendecomposition of ``Pw^{-1} = (N-1) I + Y R_loc^{-1} Y^T`` (eq. 21-24).
    """
    N, Nx = E.shape
    mu = E.mean(0)
    A = E - mu
    Y = Eo - Eo.mean(0)
    dy = y - Eo.mean(0)
    out = E.copy()
    for i in range(Nx):
        keep = (rho[i] > 0) & ~np.isnan(y)
        if not keep.any():
            continue
        Rinv = np.diag(rho[i, keep] / r[keep])
        Yl = Y[:, keep]
        lam, V = np.linalg.eigh(Yl @ Rinv @ Yl.T + (N - 1) * np.eye(N))
        Pw = (V / lam) @ V.T
        T = (V * lam**-0.5) @ V.T * np.sqrt(N - 1)
        w = dy[keep] @ Rinv @ Yl.T @ Pw
        out[:, i] = mu[i] + w @ A[:, i] + T @ A[:, i]
    return out


def dapper_svd0(A):
    M, N = A.shape
    return np.linalg.svd(A, full_matrices=M > N)


def dapper_pad0(x, N):
    out = np.zeros(N)
    out[: len(x)] = x
    return out


def dapper_dist2coeff_gc(dists, loc_rad):
    """DAPPER ``dist2coeff(dists, loc_rad, tag="GC")`` (R = 1.82 loc_rad), transcribed."""
    coeffs = np.zeros(dists.shape)
    R = loc_rad * 1.82
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


def dapper_letkf(E, Eo, r, y, state_xy, obs_xy, domain, loc_rad, cutoff=1e-3):
    """DAPPER ``local_analyses`` (one grid point per batch, ``xN=None``) with ``EnKF_analysis``
    ``"Sqrt"`` (its ``"Sqrt svd"`` branch, taken since a batch has Nx=1 < N), transcribed;
    periodic distances as ``pairwise_distances(..., periodic=True, domain)``."""
    E = E.copy()
    N = len(E)
    N1 = N - 1
    xo = Eo.mean(0)
    Y = (Eo - xo) / np.sqrt(r)  # Y @ R.sym_sqrt_inv.T for diagonal R
    dy = (y - xo) / np.sqrt(r)
    for ii in range(E.shape[1]):
        d = np.abs(state_xy[ii] - obs_xy)
        d = np.minimum(d, domain - d)
        coeffs = dapper_dist2coeff_gc(d, loc_rad)
        oBatch = np.arange(len(d))[coeffs > cutoff]
        tapering = coeffs[oBatch]
        if len(oBatch) == 0:
            continue
        tpr = np.sqrt(tapering)
        Yl, dyl = Y[:, oBatch] * tpr, dy[oBatch] * tpr
        Eii = E[:, [ii]]
        mu = Eii.mean(0)
        A = Eii - mu
        V, s, _ = dapper_svd0(Yl)
        dd = dapper_pad0(s**2, N) + N1
        Pw = (V * dd ** (-1.0)) @ V.T
        T = (V * dd ** (-0.5)) @ V.T * np.sqrt(N1)
        w = dyl @ Yl.T @ Pw
        E[:, [ii]] = mu + w @ A + T @ A
    return E


# --- problems ---------------------------------------------------------------------------------


def _problem(seed, n_e, n_x, n_y, dim=2, missing=()):
    """Random forecast, identity-like H on random sites, diagonal R, random coordinates."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_e, n_x)) + rng.standard_normal(n_x)
    state_coords = rng.uniform(0, 10, (n_x, dim))
    obs_coords = rng.uniform(0, 10, (n_y, dim))
    H = rng.standard_normal((n_y, n_x)) / np.sqrt(n_x)
    r = rng.uniform(0.4, 1.6, n_y)
    y = H @ rng.standard_normal(n_x) + np.sqrt(r) * rng.standard_normal(n_y)
    y[list(missing)] = np.nan
    return X, H, r, y, state_coords, obs_coords


@eqx.filter_jit
def _jitted_analysis(filt, X, y, obs_op, noise, state_coords, obs_coords, extra):
    # Compiled once per configuration: much cheaper than eager op-by-op dispatch.
    return filt.analysis(
        None, X, y, obs_op, noise, state_coords=state_coords, obs_coords=obs_coords, **extra
    )


def _analysis(filt, X, H, r, y, state_coords, obs_coords, **extra):
    return _jitted_analysis(
        filt,
        jnp.asarray(X),
        jnp.asarray(y),
        fxp.LinearObs(jnp.asarray(H)),
        fxp.diagonal_noise(jnp.asarray(r)),
        jnp.asarray(state_coords),
        jnp.asarray(obs_coords),
        extra,
    )


# --- equivalence with the global ETKF ---------------------------------------------------------


@pytest.mark.parametrize("n_y", [3, 8, 13])
@pytest.mark.parametrize("missing", [(), (1, 2)])
def test_infinite_radius_equals_etkf(n_y, missing):
    # rho = 1 everywhere and all observations local: every local analysis is the global ETKF.
    n_e = 8
    X, H, r, y, sc, oc = _problem(n_y, n_e, 11, n_y, missing=missing)
    letkf = _analysis(ff.LETKF(radius=jnp.inf), X, H, r, y, sc, oc)
    etkf = ff.ETKF().analysis(
        None, jnp.asarray(X), jnp.asarray(y), fxp.LinearObs(jnp.asarray(H)), jnp.asarray(r)
    )
    np.testing.assert_allclose(letkf.particles, etkf.particles, atol=TOL64, rtol=0)
    np.testing.assert_allclose(letkf.log_likelihood, etkf.log_likelihood, atol=TOL64)
    n_observed = n_y - len(missing)
    np.testing.assert_array_equal(letkf.info.n_local_obs, np.full(11, n_observed))
    assert int(letkf.info.n_truncated) == 0


# --- equivalence with a numpy local ETKF (tapered R^{-1}) --------------------------------------


@pytest.mark.parametrize(
    "n_e, n_y, max_local_obs",
    [
        (6, 30, None),  # L = N_y >= N_e: N_e x N_e path
        (12, 9, None),  # L = N_y < N_e: L x L Gram path
        (12, 30, 7),  # top-k selection, Gram path (L = 7 < 12); radius covers < 7 obs
    ],
)
def test_matches_numpy_local_etkf_with_tapered_rinv(n_e, n_y, max_local_obs):
    X, H, r, y, sc, oc = _problem(5, n_e, 10, n_y, missing=(0,))
    radius = 1.0 if max_local_obs else 2.5
    filt = ff.LETKF(radius=radius, max_local_obs=max_local_obs)
    out = _analysis(filt, X, H, r, y, sc, oc)
    dist = np.linalg.norm(sc[:, None, :] - oc[None, :, :], axis=-1)
    rho = np_gaspari_cohn(dist, radius)
    if max_local_obs:
        in_support = ((rho > 0) & ~np.isnan(y)[None, :]).sum(1)
        assert in_support.max() <= max_local_obs  # the problem is set up so top-k is exact
        assert in_support.min() >= 1
        assert int(out.info.n_truncated) == 0
    expected = np_local_etkf(X, X @ H.T, r, y, rho)
    np.testing.assert_allclose(out.particles, expected, atol=TOL64, rtol=0)
    n_local = ((rho > 0) & ~np.isnan(y)[None, :]).sum(1)
    np.testing.assert_array_equal(out.info.n_local_obs, n_local)


def test_single_point_update_matches_numpy_local_etkf():
    # letkf_local_update at one grid point == the numpy local ETKF's column, both paths.
    rng = np.random.default_rng(0)
    for n_e, n_loc in [(9, 4), (5, 11)]:
        X = rng.standard_normal((n_e, 3))
        Yo = rng.standard_normal((n_e, n_loc))
        r = rng.uniform(0.5, 2.0, n_loc)
        y = rng.standard_normal(n_loc)
        rho = rng.uniform(0.0, 1.0, n_loc)
        rho[0] = 0.0
        expected = np_local_etkf(X, Yo, r, y, np.tile(rho, (3, 1)))[:, 1]
        S = (Yo - Yo.mean(0)) / np.sqrt(r) / np.sqrt(n_e - 1) * np.sqrt(rho)
        delta = (y - Yo.mean(0)) / np.sqrt(r) * np.sqrt(rho)
        a = X[:, 1] - X[:, 1].mean()
        got = letkf_local_update(
            jnp.asarray(a), jnp.asarray(X[:, 1].mean()), jnp.asarray(S), jnp.asarray(delta)
        )
        np.testing.assert_allclose(got, expected, atol=TOL64, rtol=0)


def test_gram_path_equals_ensemble_path():
    # L < N_e uses the L x L Gram matrix; padding S with zero columns (zero-weight
    # observations) to L >= N_e forces the N_e x N_e path: same analysis.
    rng = np.random.default_rng(1)
    n_e, n_loc = 10, 4
    a = rng.standard_normal(n_e)
    a -= a.mean()
    S = rng.standard_normal((n_e, n_loc)) * 0.7
    S -= S.mean(0)
    delta = rng.standard_normal(n_loc)
    gram = letkf_local_update(jnp.asarray(a), jnp.asarray(0.3), jnp.asarray(S), jnp.asarray(delta))
    S_pad = np.concatenate([S, np.zeros((n_e, n_e))], axis=1)
    d_pad = np.concatenate([delta, np.zeros(n_e)])
    full = letkf_local_update(
        jnp.asarray(a), jnp.asarray(0.3), jnp.asarray(S_pad), jnp.asarray(d_pad)
    )
    np.testing.assert_allclose(gram, full, atol=TOL64, rtol=0)


# --- Newton-Schulz transforms (the default N_e x N_e path) ------------------------------------


@pytest.mark.parametrize("noise_scale", [1.0, 1e-4])
def test_newton_transform_equals_eigh(noise_scale):
    # The default Newton-Schulz transform == the batched-eigh one. noise_scale = 1e-4 makes
    # I + S S^T badly conditioned (~1e5): more iterations, same result. Both are computed to
    # round-off; 1e-10 leaves room for the eigh's own error at that conditioning.
    X, H, r, y, sc, oc = _problem(20, 6, 10, 30, missing=(0, 4))
    r = r * noise_scale
    out = {
        m: _analysis(ff.LETKF(radius=2.5, transform_method=m), X, H, r, y, sc, oc)
        for m in ("newton", "eigh")
    }
    # Every observation is a candidate (L = N_y = 30 >= N_e = 6: the N_e x N_e path), and the
    # taper makes the local problems differ from point to point.
    assert np.ptp(np.asarray(out["newton"].info.n_local_obs)) > 0
    np.testing.assert_allclose(out["newton"].particles, out["eigh"].particles, atol=1e-10)


def test_newton_matrix_function_edge_cases():
    from filterax.primitives import symmetric_matrix_function

    rng = np.random.default_rng(21)
    A = rng.standard_normal((7, 3))
    cases = {
        "zero": np.zeros((5, 5)),  # all eigenvalues 0 (no iteration needed): identity
        "rank_3": A @ A.T,  # repeated eigenvalue 0
        "huge": 1e8 * (A @ A.T) + np.eye(7),  # condition ~1e8
    }
    for name, m in cases.items():
        got = symmetric_matrix_function(jnp.asarray(m), "inv_sqrt_one_plus", "newton")
        ref = symmetric_matrix_function(jnp.asarray(m), "inv_sqrt_one_plus", "eigh")
        # (I + M)^{-1/2} is only determined to ~eps * cond(I + M) by M in floating point (the
        # Daleckii-Krein bound with |f'| <= 1/2), for either algorithm.
        cond = np.linalg.cond(np.eye(len(m)) + m)
        np.testing.assert_allclose(got, ref, atol=max(1e-13, 1e-15 * cond), err_msg=name)
    # A non-finite input ends the loop (NaN out) instead of iterating forever.
    bad = symmetric_matrix_function(jnp.full((4, 4), jnp.nan), "inv_sqrt_one_plus", "newton")
    assert np.all(np.isnan(bad))
    with pytest.raises(ValueError, match="inv_sqrt_one_plus"):
        symmetric_matrix_function(jnp.eye(3), "inv_sqrt_one_plus_push", "newton")


def test_newton_transform_gradients_equal_eigh_gradients():
    # The derivative comes from the same eigh-based rule for both methods (the while_loop is
    # never differentiated): finite, and equal to the eigh path's to round-off.
    X, H, r, y, sc, oc = _problem(22, 5, 8, 20)

    def loss(radius, noise, method):
        filt = ff.LETKF(radius=radius, transform_method=method)
        return jnp.sum(_analysis(filt, X, H, noise, y, sc, oc).particles ** 2)

    args = (jnp.asarray(3.0), jnp.asarray(r))
    g_newton = jax.grad(loss, argnums=(0, 1))(*args, "newton")
    g_eigh = jax.grad(loss, argnums=(0, 1))(*args, "eigh")
    for a, b in zip(g_newton, g_eigh, strict=True):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # Under vmap (a batched while_loop) too.
    radii = jnp.array([1.5, 3.0, 6.0])
    batched = jax.vmap(lambda rad: loss(rad, jnp.asarray(r), "newton"))(radii)
    single = [loss(rad, jnp.asarray(r), "eigh") for rad in radii]
    np.testing.assert_allclose(batched, single, rtol=1e-12)


def test_newton_transform_float32_matches_float64():
    X, H, r, y, sc, oc = _problem(23, 6, 12, 30, missing=(2,))
    filt = ff.LETKF(radius=2.5)
    ref = _analysis(filt, X, H, r, y, sc, oc)
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    out = _jitted_analysis(
        filt, f32(X), f32(y), fxp.LinearObs(f32(H)), f32(r), f32(sc), f32(oc), {}
    )
    assert out.particles.dtype == jnp.float32
    # Stopping tolerance sqrt(eps32) then one more quadratic step: float32 round-off.
    np.testing.assert_allclose(out.particles, ref.particles, atol=1e-4)


# --- DAPPER parity on the periodic Lorenz-96 ring ----------------------------------------------


@pytest.mark.parametrize("obs_every, n_e", [(1, 7), (2, 20)])
def test_periodic_l96_matches_dapper_local_analyses(obs_every, n_e):
    # DAPPER LETKF, loc_rad = 4 (radius = 1.82 * 4 = 7.28), cutoff 1e-3, periodic distances on
    # the 40-site ring; observing every site (L = 25 > N_e = 7) or every other site
    # (L = 13 < N_e = 20: the Gram path).
    rng = np.random.default_rng(obs_every)
    n_x = 40
    grid = np.arange(n_x, dtype=float)
    sites = grid[::obs_every]
    H = np.eye(n_x)[::obs_every]
    X = 3.0 + rng.standard_normal((n_e, n_x))
    r = np.full(len(sites), 1.0)
    y = H @ (3.0 + rng.standard_normal(n_x)) + rng.standard_normal(len(sites))
    loc_rad = 4.0
    filt = ff.LETKF(
        radius=fxp.dapper_radius_to_gc_halfwidth(loc_rad), distance=PERIODIC40, cutoff=1e-3
    )
    out = _analysis(filt, X, H, r, y, grid, sites)
    expected = dapper_letkf(X, X @ H.T, r, y, grid, sites, 40.0, loc_rad)
    np.testing.assert_allclose(out.particles, expected, atol=TOL64, rtol=0)
    # Periodicity: the counts are invariant under a shift by the observation spacing,
    # including across the 39 -> 0 seam.
    n_local = np.asarray(out.info.n_local_obs)
    np.testing.assert_array_equal(np.roll(n_local, obs_every), n_local)
    # Windows: same answer at O(N_x L) with L just covering the weighted observations.
    windowed = ff.LETKF(
        radius=filt.radius,
        distance=PERIODIC40,
        cutoff=1e-3,
        max_local_obs=int(n_local.max()) + 2,
        selection="window",
    )
    out_w = _analysis(windowed, X, H, r, y, grid, sites)
    np.testing.assert_allclose(out_w.particles, expected, atol=TOL64, rtol=0)
    assert int(out_w.info.n_truncated) == 0


def test_periodic_distance_wraps_around():
    # Site 0 of the ring must see observations at sites 38 and 39 (distance 2 and 1); with a
    # euclidean distance it would not, and its analysis would differ.
    n_x, n_e = 40, 6
    rng = np.random.default_rng(3)
    grid = np.arange(n_x, dtype=float)
    X = rng.standard_normal((n_e, n_x))
    H = np.eye(n_x)[[38, 39]]
    y = np.array([1.5, -2.0])
    r = np.ones(2)
    periodic = _analysis(
        ff.LETKF(radius=2.0, distance=PERIODIC40), X, H, r, y, grid, grid[[38, 39]]
    )
    flat = _analysis(ff.LETKF(radius=2.0), X, H, r, y, grid, grid[[38, 39]])
    assert int(periodic.info.n_local_obs[0]) == 2 and int(flat.info.n_local_obs[0]) == 0
    np.testing.assert_allclose(flat.particles[:, 0], X[:, 0], atol=1e-12)
    assert not np.allclose(periodic.particles[:, 0], X[:, 0])


def test_distance_context_keyword_and_its_precedence(no_runtime_typecheck):
    # `distance` given as context (what EnsembleFilter passes from the model) is the same
    # program as the LETKF field; an explicit field wins over the context; None = Euclidean.
    n_x, n_e = 40, 6
    rng = np.random.default_rng(5)
    grid = np.arange(n_x, dtype=float)
    X = rng.standard_normal((n_e, n_x))
    H, r, y = np.eye(n_x)[[38, 39, 5]], np.ones(3), np.array([1.5, -2.0, 0.3])
    sites = grid[[38, 39, 5]]
    field = _analysis(ff.LETKF(radius=2.0, distance=PERIODIC40), X, H, r, y, grid, sites)
    context = _analysis(ff.LETKF(radius=2.0), X, H, r, y, grid, sites, distance=PERIODIC40)
    np.testing.assert_array_equal(context.particles, field.particles)
    explicit = _analysis(
        ff.LETKF(radius=2.0, distance=fxp.euclidean), X, H, r, y, grid, sites, distance=PERIODIC40
    )
    flat = _analysis(ff.LETKF(radius=2.0), X, H, r, y, grid, sites, distance=None)
    np.testing.assert_array_equal(explicit.particles, flat.particles)
    assert int(field.info.n_local_obs[0]) == 2 and int(flat.info.n_local_obs[0]) == 0
    with pytest.raises(TypeError, match="distance"):
        ff.LETKF(radius=2.0).analysis(
            None,
            jnp.asarray(X),
            jnp.asarray(y),
            fxp.LinearObs(jnp.asarray(H)),
            1.0,
            state_coords=grid,
            obs_coords=sites,
            distance=40.0,
        )


# --- selection, chunking, missing observations --------------------------------------------------


@pytest.mark.parametrize("periodic", [False, True])
def test_window_equals_topk_equals_all(periodic):
    # 1-D irregular, unsorted observation sites; L = 15 covers every support (checked), so the
    # three selections must agree.
    rng = np.random.default_rng(4)
    n_e, n_x, n_y = 8, 40, 60
    grid = np.arange(n_x, dtype=float)
    sites = rng.uniform(0, 40, n_y)
    X = rng.standard_normal((n_e, n_x))
    H = np.zeros((n_y, n_x))
    H[np.arange(n_y), np.floor(sites).astype(int)] = 1.0
    r = rng.uniform(0.5, 1.5, n_y)
    y = rng.standard_normal(n_y)
    y[[3, 10]] = np.nan
    distance = PERIODIC40 if periodic else fxp.euclidean
    radius = 1.1
    outs = {}
    for selection, max_local in [("all", None), ("topk", 15), ("window", 15)]:
        filt = ff.LETKF(
            radius=radius, distance=distance, max_local_obs=max_local, selection=selection
        )
        outs[selection] = _analysis(filt, X, H, r, y, grid, sites)
    assert int(np.max(outs["all"].info.n_local_obs)) < 15
    for selection in ("topk", "window"):
        np.testing.assert_allclose(
            outs[selection].particles, outs["all"].particles, atol=TOL64, rtol=0
        )
        np.testing.assert_array_equal(
            outs[selection].info.n_local_obs, outs["all"].info.n_local_obs
        )
        assert int(outs[selection].info.n_truncated) == 0


@pytest.mark.parametrize("periodic", [False, True])
def test_window_with_few_observed_sites(periodic):
    # 40 sites, only 7 observed (< 2L = 18): the sorted window wraps onto itself and must
    # neither duplicate an observation nor pick a missing one.
    rng = np.random.default_rng(14)
    n_x = 40
    grid = np.arange(n_x, dtype=float)
    X = rng.standard_normal((6, n_x))
    y = rng.standard_normal(n_x)
    y[rng.permutation(n_x)[:33]] = np.nan
    distance = PERIODIC40 if periodic else fxp.euclidean
    outs = [
        _analysis(
            ff.LETKF(radius=9.0, distance=distance, max_local_obs=m, selection=sel),
            X,
            np.eye(n_x),
            np.ones(n_x),
            y,
            grid,
            grid,
        )
        for sel, m in [("all", None), ("window", 9)]
    ]
    np.testing.assert_allclose(outs[1].particles, outs[0].particles, atol=TOL64, rtol=0)
    np.testing.assert_array_equal(outs[1].info.n_local_obs, outs[0].info.n_local_obs)


def test_truncation_is_reported():
    rng = np.random.default_rng(5)
    n_x = 40
    grid = np.arange(n_x, dtype=float)
    X = rng.standard_normal((6, n_x))
    y = rng.standard_normal(n_x)
    filt = ff.LETKF(radius=7.28, distance=PERIODIC40, max_local_obs=5)
    out = _analysis(filt, X, np.eye(n_x), np.ones(n_x), y, grid, grid)
    assert int(out.info.n_truncated) == n_x
    filt = ff.LETKF(radius=2.0, distance=PERIODIC40, max_local_obs=9)
    out = _analysis(filt, X, np.eye(n_x), np.ones(n_x), y, grid, grid)
    assert int(out.info.n_truncated) == 0


@pytest.mark.parametrize("chunk_size", [1, 7])
def test_chunked_equals_unchunked(chunk_size):
    # chunk 7 leaves a remainder of 41 % 7 = 6 points.
    X, H, r, y, sc, oc = _problem(6, 7, 41, 25, dim=1, missing=(4,))
    ref = _analysis(ff.LETKF(radius=1.5, max_local_obs=11), X, H, r, y, sc, oc)
    out = _analysis(
        ff.LETKF(radius=1.5, max_local_obs=11, chunk_size=chunk_size), X, H, r, y, sc, oc
    )
    np.testing.assert_allclose(out.particles, ref.particles, atol=1e-12, rtol=0)
    np.testing.assert_array_equal(out.info.n_local_obs, ref.info.n_local_obs)


@pytest.mark.parametrize("selection, max_local", [("all", None), ("topk", 6), ("window", 6)])
def test_nan_obs_equal_observed_subset(selection, max_local):
    dim = 1 if selection == "window" else 2
    missing = (0, 5, 6)
    X, H, r, y, sc, oc = _problem(7, 9, 15, 20, dim=dim, missing=missing)
    keep = ~np.isnan(y)
    filt = ff.LETKF(radius=2.0, max_local_obs=max_local, selection=selection)
    full = _analysis(filt, X, H, r, y, sc, oc)
    sub = _analysis(filt, X, H[keep], r[keep], y[keep], sc, oc[keep])
    assert np.all(np.isfinite(full.particles))
    np.testing.assert_allclose(full.particles, sub.particles, atol=TOL64, rtol=0)
    np.testing.assert_allclose(full.log_likelihood, sub.log_likelihood, atol=TOL64)
    np.testing.assert_array_equal(full.info.n_local_obs, sub.info.n_local_obs)


def test_neighbour_table_equals_window():
    # A user-supplied (N_x, L) table of the L nearest sites (-1 padded) == window selection.
    n_x, n_e, L = 40, 8, 9
    rng = np.random.default_rng(8)
    grid = np.arange(n_x, dtype=float)
    X = rng.standard_normal((n_e, n_x))
    y = rng.standard_normal(n_x)
    d = np.abs(grid[:, None] - grid[None, :])
    d = np.minimum(d, 40 - d)
    table = np.argsort(d, axis=1, kind="stable")[:, : L - 2]
    table = np.concatenate([table, -np.ones((n_x, 2), dtype=table.dtype)], axis=1)
    filt = ff.LETKF(radius=1.6, distance=PERIODIC40)
    out_t = _analysis(
        filt, X, np.eye(n_x), np.ones(n_x), y, grid, grid, local_obs_indices=jnp.asarray(table)
    )
    window = ff.LETKF(radius=1.6, distance=PERIODIC40, max_local_obs=L)
    out_w = _analysis(window, X, np.eye(n_x), np.ones(n_x), y, grid, grid)
    np.testing.assert_allclose(out_t.particles, out_w.particles, atol=TOL64, rtol=0)


def test_haversine_topk_equals_all():
    rng = np.random.default_rng(9)
    n_e, n_x, n_y = 6, 30, 50
    state_ll = np.stack([rng.uniform(-60, 60, n_x), rng.uniform(-180, 180, n_x)], axis=1)
    obs_ll = np.stack([rng.uniform(-60, 60, n_y), rng.uniform(-180, 180, n_y)], axis=1)
    X = rng.standard_normal((n_e, n_x))
    H = rng.standard_normal((n_y, n_x)) / np.sqrt(n_x)
    r = np.ones(n_y)
    y = rng.standard_normal(n_y)
    radius = 1500.0  # km: GC support 3000 km
    base = dict(radius=radius, distance=fxp.haversine)
    full = _analysis(ff.LETKF(**base), X, H, r, y, state_ll, obs_ll)
    # One more candidate than the largest support count, so no point is flagged as truncated.
    L = int(np.max(full.info.n_local_obs)) + 1
    assert 2 <= L < n_y
    topk = _analysis(ff.LETKF(**base, max_local_obs=L, chunk_size=8), X, H, r, y, state_ll, obs_ll)
    np.testing.assert_allclose(topk.particles, full.particles, atol=TOL64, rtol=0)
    assert int(topk.info.n_truncated) == 0


def test_all_observations_missing_leaves_forecast_unchanged():
    X, H, r, y, sc, oc = _problem(15, 6, 10, 8, dim=1)
    y = np.full_like(y, np.nan)
    for filt in [ff.LETKF(radius=2.0), ff.LETKF(radius=2.0, max_local_obs=3)]:
        out = _analysis(filt, X, H, r, y, sc, oc)
        np.testing.assert_allclose(out.particles, X, atol=1e-12)
        assert int(np.max(out.info.n_local_obs)) == 0


def test_lorenz96_twin_through_assimilate():
    # DAPPER L96 sakov2008, LETKF N = 10, infl 1.04, loc_rad 6: published rmse.a 0.20
    # (../shared/REFERENCES.md). 500 cycles (250 burn-in) of one seed must land near it;
    # coordinates travel through assimilate's context.
    from filterax.zoo import presets

    ssm = presets.lorenz96_sakov2008()
    xp = ssm.simulate(jax.random.key(0), 500)
    ens0 = ssm.initial_ensemble(jax.random.key(1), 10)
    grid = jnp.arange(40.0)
    filt = ff.LETKF(
        radius=fxp.dapper_radius_to_gc_halfwidth(6.0), distance=PERIODIC40, max_local_obs=25
    )
    res = ff.assimilate(
        filt,
        ssm.dynamics,
        ssm.obs_op,
        ssm.obs_noise,
        ens0,
        xp.observations,
        xp.times,
        key=jax.random.key(2),
        inflator=fxp.MultiplicativeInflator(1.04),
        context={"state_coords": grid, "obs_coords": grid},
    )
    err = jnp.sqrt(jnp.mean((res.analysis_mean - xp.truth) ** 2, axis=1))
    rmse = float(jnp.mean(err[250:]))
    assert rmse < 0.26, rmse


def test_large_unchunked_grid_does_not_deadlock():
    # Regression: with an independent batched Cholesky beside the batched eigh, one vmap over
    # 2^15 grid points deadlocked JAX's CPU LAPACK thread pool (ParallelBatchMap). Run in a
    # subprocess so a regression fails by timeout instead of hanging the suite.
    child = textwrap.dedent(
        """
        import functools
        import jax, jax.numpy as jnp
        import filterax.primitives as fxp
        import filterax.filters as ff
        n_x, n_e = 2**15, 32
        grid = jnp.arange(n_x, dtype=jnp.float32)
        X = jax.random.normal(jax.random.key(0), (n_e, n_x))
        y = jax.random.normal(jax.random.key(1), (n_x,))
        per = functools.partial(fxp.periodic, period=float(n_x))
        filt = ff.LETKF(radius=2.9, distance=per, max_local_obs=11)
        run = jax.jit(lambda X, y, g: filt.analysis(
            None, X, y, lambda x: x, 1.0, state_coords=g, obs_coords=g).particles)
        out = run(X, y, grid).block_until_ready()
        print("OK", bool(jnp.all(jnp.isfinite(out))))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", child],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK True" in proc.stdout


# --- transformations ---------------------------------------------------------------------------


def test_gradient_wrt_radius_is_finite_and_matches_finite_differences():
    rng = np.random.default_rng(10)
    n_x = 40
    grid = np.arange(n_x, dtype=float)
    X = 2.0 + rng.standard_normal((10, n_x))
    sites = grid[::2]
    H = np.eye(n_x)[::2]
    y = rng.standard_normal(len(sites))
    y[3] = np.nan

    def loss(radius, **kw):
        filt = ff.LETKF(radius=radius, distance=PERIODIC40, **kw)
        out = _analysis(filt, X, H, np.ones(len(sites)), y, grid, sites)
        return jnp.sum(out.particles**2)

    # Window selection + chunked lax.map: the path large grids take.
    kw = {"max_local_obs": 13, "chunk_size": 16}
    grad = jax.grad(lambda rad: loss(rad, **kw))(3.3)
    fd = helpers.central_difference(lambda rad: loss(rad, **kw), 3.3, h=1e-5)
    assert np.isfinite(grad)
    # Central differences at h = 1e-5 on an O(1e3) loss: truncation ~1e-7 relative.
    np.testing.assert_allclose(grad, fd, rtol=1e-5)


def test_vmap_over_radius_and_jit():
    X, H, r, y, sc, oc = _problem(11, 6, 12, 10, dim=1)
    radii = jnp.array([0.8, 2.0, 5.0])

    @jax.jit
    def run(radius):
        filt = ff.LETKF(radius=radius, max_local_obs=5)
        return _analysis(filt, X, H, r, y, sc, oc).particles

    batched = jax.vmap(run)(radii)
    for i, radius in enumerate(radii):
        single = _analysis(ff.LETKF(radius=float(radius), max_local_obs=5), X, H, r, y, sc, oc)
        np.testing.assert_allclose(batched[i], single.particles, atol=1e-12)
    # eqx.filter_vmap over a batch of filters works too (radius is a dynamic leaf).
    filters = eqx.filter_vmap(lambda rad: ff.LETKF(radius=rad, max_local_obs=5))(radii)
    out = eqx.filter_vmap(lambda f: _analysis(f, X, H, r, y, sc, oc).particles)(filters)
    np.testing.assert_allclose(out, batched, atol=1e-12)


def test_float32():
    X, H, r, y, sc, oc = _problem(12, 6, 12, 10, dim=1, missing=(2,))
    filt = ff.LETKF(radius=2.0, max_local_obs=5)
    ref = _analysis(filt, X, H, r, y, sc, oc)
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    out = _jitted_analysis(
        filt, f32(X), f32(y), fxp.LinearObs(f32(H)), f32(r), f32(sc), f32(oc), {}
    )
    assert out.particles.dtype == jnp.float32
    # float32 round-off on O(1) values through a few small eigenproblems.
    np.testing.assert_allclose(out.particles, ref.particles, atol=1e-4)


# --- bad input ---------------------------------------------------------------------------------


def test_bad_inputs_are_clear_errors(no_runtime_typecheck):
    X, H, r, y, sc, oc = _problem(13, 5, 8, 6)
    filt = ff.LETKF(radius=2.0)
    obs_op = fxp.LinearObs(jnp.asarray(H))
    args = (None, jnp.asarray(X), jnp.asarray(y), obs_op, jnp.asarray(r))
    with pytest.raises(ValueError, match="state_coords"):
        filt.analysis(*args, obs_coords=oc)
    with pytest.raises(ValueError, match="obs_coords"):
        filt.analysis(*args, state_coords=sc)
    with pytest.raises(ValueError, match="state_coords"):
        filt.analysis(*args, state_coords=sc[:-1], obs_coords=oc)
    with pytest.raises(ValueError, match="obs_coords"):
        filt.analysis(*args, state_coords=sc, obs_coords=oc[:, :1])
    with pytest.raises(ValueError, match="same coordinates"):
        filt.analysis(*args, state_coords=sc[:, :1], obs_coords=oc[:, :1].repeat(3, 1))
    with pytest.raises(ValueError, match="unexpected context"):
        filt.analysis(*args, state_coords=sc, obs_coords=oc, state_coord=sc)
    with pytest.raises(ValueError, match="local_obs_indices"):
        filt.analysis(
            *args, state_coords=sc, obs_coords=oc, local_obs_indices=jnp.zeros((3, 2), int)
        )
    dense = jnp.asarray(np.diag(r) + 0.1)
    with pytest.raises(ValueError, match="diagonal"):
        filt.analysis(
            None, jnp.asarray(X), jnp.asarray(y), obs_op, dense, state_coords=sc, obs_coords=oc
        )
    with pytest.raises(ValueError, match="radius"):
        ff.LETKF(radius=-1.0)
    with pytest.raises(ValueError, match="max_local_obs"):
        ff.LETKF(radius=1.0, max_local_obs=0)
    with pytest.raises(ValueError, match="selection"):
        ff.LETKF(radius=1.0, selection="nearest")
    with pytest.raises(ValueError, match="cutoff"):
        ff.LETKF(radius=1.0, cutoff=1.5)


@pytest.mark.parametrize("form", ["matrix", "lineax"])
def test_matrix_and_lineax_obs_op_equal_the_callable(form):
    X, H, r, y, sc, oc = _problem(740, 6, 10, 8, missing=(3,))
    filt = ff.LETKF(radius=3.0, max_local_obs=5)
    ref = _analysis(filt, X, H, r, y, sc, oc)
    H = jnp.asarray(H)
    obs_op = H if form == "matrix" else lx.MatrixLinearOperator(H)
    out = _jitted_analysis(
        filt,
        jnp.asarray(X),
        jnp.asarray(y),
        obs_op,
        fxp.diagonal_noise(jnp.asarray(r)),
        jnp.asarray(sc),
        jnp.asarray(oc),
        {},
    )
    # The same float64 products H x: equal to round-off.
    np.testing.assert_allclose(out.particles, ref.particles, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.log_likelihood, ref.log_likelihood, rtol=0, atol=1e-12)
