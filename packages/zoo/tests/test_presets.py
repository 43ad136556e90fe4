"""The presets reproduce their published configurations (REFERENCES.md, DAPPER 1.8.1)."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from filterax.primitives import IdentityObs, IndexObs
from filterax.zoo import (
    KuramotoSivashinsky,
    LinearModel,
    Lorenz63,
    Lorenz96,
    StateSpaceModel,
    presets,
)


def _dense(op):
    return np.asarray(op.as_matrix())


def _assert_cov(op, value, n):
    np.testing.assert_array_equal(_dense(op), value * np.eye(n))


# --- configurations -----------------------------------------------------------------------


def test_lorenz63_sakov2012_configuration():
    ssm = presets.lorenz63_sakov2012()
    dyn = ssm.dynamics
    assert isinstance(dyn, Lorenz63)
    assert (dyn.sigma, dyn.rho, dyn.beta, dyn.dt) == (10.0, 28.0, 8.0 / 3.0, 0.01)
    assert ssm.dt_obs == 0.25
    assert round(ssm.dt_obs / dyn.dt) == 25
    assert isinstance(ssm.obs_op, IdentityObs) and ssm.n_obs == 3
    _assert_cov(ssm.obs_noise, 2.0, 3)
    np.testing.assert_array_equal(ssm.x0_mean, [1.509, -1.531, 25.46])
    _assert_cov(ssm.x0_cov, 2.0, 3)
    assert ssm.process_noise is None
    assert ssm.burn_in == 16.0 and ssm.burn_in_cycles == 64
    assert ssm.t0 == 0.0
    assert ssm.n_cycles == 1000


def test_lorenz96_sakov2008_configuration():
    ssm = presets.lorenz96_sakov2008()
    dyn = ssm.dynamics
    assert isinstance(dyn, Lorenz96)
    assert (dyn.n, dyn.forcing, dyn.dt) == (40, 8.0, 0.05)
    assert ssm.dt_obs == 0.05
    assert isinstance(ssm.obs_op, IdentityObs) and ssm.n_state == 40 and ssm.n_obs == 40
    _assert_cov(ssm.obs_noise, 1.0, 40)
    np.testing.assert_array_equal(ssm.x0_mean, np.eye(40)[0])
    _assert_cov(ssm.x0_cov, 0.001, 40)
    assert ssm.process_noise is None
    assert ssm.burn_in == 20.0 and ssm.burn_in_cycles == 400
    assert ssm.n_cycles == 1000


def _dapper_ks_x0(n=128, dl=32.0, h=0.5):
    """DAPPER's KS.x0, re-derived in numpy: Kassam-Trefethen's initial condition on the grid
    x_j = j L / n (j = 1..n), integrated for int(150 / h) ETD-RK4 steps (16 contour points)."""
    kk = np.append(np.arange(0, n // 2), 0.0) * 2.0 / dl
    lin = kk**2 - kk**4
    e, e2 = np.exp(h * lin), np.exp(h * lin / 2.0)
    roots = np.exp(1j * np.pi * (0.5 + np.arange(16)) / 16)
    cl = h * lin[:, None] + roots
    q = h * ((np.exp(cl / 2.0) - 1.0) / cl).mean(axis=-1).real
    f1 = h * ((-4.0 - cl + np.exp(cl) * (4.0 - 3.0 * cl + cl**2)) / cl**3).mean(-1).real
    f2 = h * ((2.0 + cl + np.exp(cl) * (-2.0 + cl)) / cl**3).mean(-1).real
    f3 = h * ((-4.0 - 3.0 * cl - cl**2 + np.exp(cl) * (4.0 - cl)) / cl**3).mean(-1).real
    d = 1j * kk

    def nonlin(v):
        return -0.5 * d * np.fft.rfft(np.fft.irfft(v) ** 2)

    grid = dl * np.pi * np.linspace(0.0, 1.0, n + 1)[1:]
    x = np.cos(grid / 16.0) * (1.0 + np.sin(grid / 16.0))
    for _ in range(int(150 / h)):
        v = np.fft.rfft(x)
        n1 = nonlin(v)
        v1 = e2 * v + q * n1
        n2a = nonlin(v1)
        v2a = e2 * v + q * n2a
        n2b = nonlin(v2a)
        v2b = e2 * v1 + q * (2.0 * n2b - n1)
        n3 = nonlin(v2b)
        x = np.fft.irfft(e * v + n1 * f1 + 2.0 * (n2a + n2b) * f2 + n3 * f3)
    return x


def test_ks_bocquet2019_configuration():
    ssm = presets.ks_bocquet2019()
    dyn = ssm.dynamics
    assert isinstance(dyn, KuramotoSivashinsky)
    assert dyn.n == 128 and dyn.length == 32.0 * math.pi and dyn.dt == 0.5
    assert ssm.dt_obs == 1.0 and round(ssm.dt_obs / dyn.dt) == 2
    assert isinstance(ssm.obs_op, IdentityObs) and ssm.n_obs == 128
    _assert_cov(ssm.obs_noise, 1.0, 128)
    _assert_cov(ssm.x0_cov, 0.001, 128)
    assert ssm.process_noise is None
    assert ssm.burn_in == 2000.0 and ssm.burn_in_cycles == 2000
    assert ssm.n_cycles == 20_000
    # The initial mean is DAPPER's KS.x0; 150 time units of a chaotic PDE amplify round-off
    # (~1e-16) by well under 1e8, so 1e-8 separates "same recipe" from anything else.
    np.testing.assert_allclose(ssm.x0_mean, _dapper_ks_x0(), rtol=0, atol=1e-8)


def test_linear_bach2025_configuration(getkey):
    key = jax.random.key(3)
    ssm = presets.linear_bach2025(key=key)
    dyn = ssm.dynamics
    assert isinstance(dyn, LinearModel)
    a = np.asarray(dyn.matrix)
    assert a.shape == (40, 40)
    np.testing.assert_allclose(a, a.T, atol=1e-14)
    # Independent re-derivation of Section 3.2 from the same W (first half of split(key)).
    key_a, key_q = jax.random.split(key)
    w = np.asarray(jax.random.normal(key_a, (40, 40)))
    lam, vec = np.linalg.eigh(0.5 * (w + w.T))
    expected_a = (vec * (lam / (np.abs(lam).max() + 0.1))) @ vec.T
    np.testing.assert_allclose(a, expected_a, atol=1e-12)
    assert np.abs(np.linalg.eigvalsh(a)).max() < 1.0
    q = 0.5 * np.asarray(jax.random.normal(key_q, (40, 40)))
    sigma = _dense(ssm.process_noise)
    np.testing.assert_allclose(sigma, q @ q.T + 0.1 * np.eye(40), atol=1e-12)
    assert np.linalg.eigvalsh(sigma).min() >= 0.1 - 1e-10
    assert ssm.dt_obs == dyn.dt == 1.0
    assert isinstance(ssm.obs_op, IdentityObs) and ssm.n_obs == 40
    _assert_cov(ssm.obs_noise, 1.0, 40)
    np.testing.assert_array_equal(ssm.x0_mean, np.ones(40))
    _assert_cov(ssm.x0_cov, 1.0, 40)
    assert ssm.burn_in == 0.0 and ssm.burn_in_cycles == 0
    assert ssm.n_cycles == 1000


def test_linear_bach2025_every_other_component_and_keys():
    ssm = presets.linear_bach2025(observe="every_other")
    assert isinstance(ssm.obs_op, IndexObs) and ssm.n_obs == 20
    np.testing.assert_array_equal(ssm.observe(jnp.arange(40.0)), np.arange(0, 40, 2))
    _assert_cov(ssm.obs_noise, 1.0, 20)
    # The default key is fixed (reproducible instance); another key gives another instance.
    again = presets.linear_bach2025()
    np.testing.assert_array_equal(ssm.dynamics.matrix, again.dynamics.matrix)
    other = presets.linear_bach2025(key=jax.random.key(1))
    assert not np.allclose(other.dynamics.matrix, again.dynamics.matrix)
    with pytest.raises(ValueError, match="every_other"):
        presets.linear_bach2025(observe="odd")


def test_lorenz96_bach2025_configuration():
    ssm = presets.lorenz96_bach2025()
    dyn = ssm.dynamics
    assert isinstance(dyn, Lorenz96)
    assert (dyn.n, dyn.forcing, dyn.dt) == (40, 8.0, 0.05)
    assert ssm.dt_obs == 0.05
    assert isinstance(ssm.obs_op, IdentityObs) and ssm.n_obs == 40
    _assert_cov(ssm.obs_noise, 1.0, 40)
    _assert_cov(ssm.process_noise, 0.1, 40)
    np.testing.assert_array_equal(ssm.x0_mean, np.zeros(40))
    _assert_cov(ssm.x0_cov, 1.0, 40)
    assert ssm.burn_in == 0.0 and ssm.n_cycles == 1000


def test_ks_bach2025_configuration():
    ssm = presets.ks_bach2025()
    dyn = ssm.dynamics
    assert isinstance(dyn, KuramotoSivashinsky)
    assert (dyn.n, dyn.length, dyn.dt) == (256, 22.0, 0.25)
    assert ssm.dt_obs == 1.25 and round(ssm.dt_obs / dyn.dt) == 5
    assert isinstance(ssm.obs_op, IdentityObs) and ssm.n_obs == 256
    _assert_cov(ssm.obs_noise, 0.5, 256)
    _assert_cov(ssm.process_noise, 0.01, 256)
    np.testing.assert_array_equal(ssm.x0_mean, np.zeros(256))
    _assert_cov(ssm.x0_cov, 1.0, 256)
    assert ssm.burn_in == 0.0 and ssm.n_cycles == 200


# --- metadata -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_preset_metadata_matches_published_table(name):
    ssm = presets.PRESETS[name]()
    assert isinstance(ssm, StateSpaceModel)
    assert ssm.name == name
    entry = presets.PUBLISHED_RMSE[name]
    assert ssm.reference == entry["citation"] and len(entry["citation"]) > 20
    assert dict(ssm.published_rmse) == entry["rmse_a"]
    assert all(isinstance(v, float) and v > 0 for v in entry["rmse_a"].values())
    assert isinstance(entry["notes"], str)
    assert ssm.recommended_n_cycles is not None
    assert ssm.burn_in_cycles < ssm.recommended_n_cycles <= ssm.n_cycles


def test_published_rmse_tables_hold_reference_numbers():
    assert set(presets.PUBLISHED_RMSE) == set(presets.PRESETS)
    l63 = presets.PUBLISHED_RMSE["lorenz63_sakov2012"]
    assert "Sakov" in l63["citation"] and "2012" in l63["citation"]
    assert l63["rmse_a"]["Climatology"] == 7.6
    assert l63["rmse_a"]["ETKF N=10 infl=1.02 rot"] == 0.60
    assert l63["rmse_a"]["iEnKS Lag=1 N=10 infl=1.02 rot"] == 0.31
    l96 = presets.PUBLISHED_RMSE["lorenz96_sakov2008"]
    assert "Oke" in l96["citation"] and "2008" in l96["citation"]
    assert l96["rmse_a"]["Climatology"] == 3.6
    assert l96["rmse_a"]["ETKF N=24 infl=1.013 rot"] == 0.18
    assert l96["rmse_a"]["LETKF N=7 infl=1.04 rot loc_rad=4"] == 0.22
    ks = presets.PUBLISHED_RMSE["ks_bocquet2019"]
    assert "Bocquet" in ks["citation"] and "2019" in ks["citation"]
    assert ks["rmse_a"]["ETKF N=20 infl=1.03 rot"] == 0.115
    assert ks["rmse_a"]["LETKF N=16 infl=1.02 rot loc_rad=51/1.82"] == 0.11
    vi = presets.PUBLISHED_RMSE["lorenz96_bach2025"]
    assert "Bach" in vi["citation"]
    assert set(vi["rmse_a"].values()) == {0.536, 0.562}


# --- behaviour ----------------------------------------------------------------------------


# The DAPPER presets are simulated (and checked) by the climatology test below.
@pytest.mark.parametrize(
    ("name", "n_cycles"),
    [("linear_bach2025", 4), ("lorenz96_bach2025", 4), ("ks_bach2025", 2)],
)
def test_presets_simulate_short_runs_under_jit_and_vmap(name, n_cycles, getkey):
    ssm = presets.PRESETS[name]()
    keys = jax.random.split(getkey(), 2)
    xp = eqx.filter_jit(lambda m, k: jax.vmap(lambda kk: m.simulate(kk, n_cycles))(k))(ssm, keys)
    assert xp.truth.shape == (2, n_cycles, ssm.n_state)
    assert xp.observations.shape == (2, n_cycles, ssm.n_obs)
    assert np.all(np.isfinite(xp.truth)) and np.all(np.isfinite(xp.observations))
    np.testing.assert_allclose(xp.times[0], ssm.dt_obs * np.arange(1, n_cycles + 1))
    assert not np.allclose(xp.observations[0], xp.observations[1])
    ens = ssm.initial_ensemble(getkey(), 3)
    assert ens.shape == (3, ssm.n_state)


@pytest.mark.parametrize(
    ("name", "n_cycles", "skip", "published"),
    [
        ("lorenz63_sakov2012", 1000, None, 7.6),
        ("lorenz96_sakov2008", 1000, None, 3.6),
        ("lorenz96_spantini2019", 500, None, 3.6),
        # DAPPER's KS x0 is already on the attractor, so a short spin-up suffices here.
        ("ks_bocquet2019", 500, 100, 1.3),
    ],
)
def test_truth_reproduces_published_climatology_rmse(name, n_cycles, skip, published, getkey):
    # Climatology's rmse.a depends only on the truth: matching it checks the dynamics and the
    # observation interval together. Published values have 2 significant digits and the
    # time mean over these lengths varies by ~1% between seeds, hence 5%.
    ssm = presets.PRESETS[name]()
    truth = ssm.simulate(getkey(), n_cycles).truth
    if skip is None:
        clim = float(ssm.climatology_rmse(truth))
    else:
        after = np.asarray(truth)[skip:]
        clim = float(np.mean(np.sqrt(np.mean((after - after.mean(0)) ** 2, axis=1))))
    assert clim == pytest.approx(published, rel=0.05)


@pytest.mark.parametrize("observe", ["all", "x1", "x1_squared"])
def test_lorenz63_sparse_observes_what_it_says(observe, getkey):
    ssm = presets.lorenz63_sparse(observe)
    xp = ssm.simulate(getkey(), 400)
    truth, ys = np.asarray(xp.truth), np.asarray(xp.observations)
    expected = {"all": truth, "x1": truth[:, :1], "x1_squared": truth[:, :1] ** 2}[observe]
    assert ys.shape == expected.shape and ssm.dt_obs == 0.5
    # Observation errors N(0, 2): their sample variance over 400 (x n_y) draws within 25 %.
    assert np.var(ys - expected) == pytest.approx(2.0, rel=0.25)
    with pytest.raises(ValueError, match="x1_squared"):
        presets.lorenz63_sparse("x2")


def test_bocquet2010_observes_every_other_site_with_variance_1_5(getkey):
    ssm = presets.lorenz96_bocquet2010()
    assert ssm.n_state == 10 and ssm.n_obs == 5
    xp = ssm.simulate(getkey(), 600)
    err = np.asarray(xp.observations) - np.asarray(xp.truth)[:, ::2]
    # DAPPER's Obs['noise'] = 1.5 is a variance: 3000 draws, 10 % tolerance (> 5 sd).
    assert np.var(err) == pytest.approx(1.5, rel=0.1)


def test_vi_process_noise_enters_the_truth(getkey):
    # With Sigma = 0.1 I per window, truth increments differ from the noise-free flow by
    # draws of variance 0.1 (5 sd tolerance on 40 * 50 = 2000 draws).
    ssm = presets.lorenz96_bach2025()
    xp = ssm.simulate(getkey(), 50)
    prev = jnp.concatenate([xp.initial_truth[None], xp.truth[:-1]])
    flow = jax.vmap(lambda x, t: ssm.dynamics(x, t - 0.05, t))(prev, xp.times)
    xi = np.asarray(xp.truth - flow).ravel()
    assert abs(xi.var() - 0.1) < 5 * 0.1 * np.sqrt(2 / xi.size)


# --- geometry (what localising filters take from the model) ---------------------------------

# N_x of the presets on a periodic grid; the others have no spatial structure.
RING_PRESETS = {
    "lorenz96_sakov2008": 40,
    "lorenz96_bocquet2010": 10,
    "lorenz96_spantini2019": 40,
    "ks_bocquet2019": 128,
    "lorenz96_bach2025": 40,
    "ks_bach2025": 256,
}


def _np_ring_distances(a, b, period):
    d = np.abs(a[:, None] - b[None, :]) % period
    return np.minimum(d, period - d)


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_presets_carry_their_geometry(name):
    from filterax.primitives import PeriodicDistance, pairwise_distances

    ssm = presets.PRESETS[name]()
    if name not in RING_PRESETS:
        assert ssm.state_coords is None and ssm.obs_coords is None and ssm.distance is None
        return
    n = RING_PRESETS[name]
    grid = np.arange(n, dtype=float)
    observed = grid[::2] if "bocquet2010" in name or "spantini2019" in name else grid
    # Grid-index coordinates, the observed points' as obs_coords, DAPPER's periodic
    # nd_Id_localization distance in grid points (exact small integers: compared exactly).
    np.testing.assert_array_equal(ssm.state_coords, grid[:, None])
    np.testing.assert_array_equal(ssm.obs_coords, observed[:, None])
    assert ssm.state_coords.dtype == ssm.x0_mean.dtype
    assert ssm.distance == PeriodicDistance(float(n))
    dist = pairwise_distances(ssm.state_coords, ssm.obs_coords, ssm.distance)
    np.testing.assert_array_equal(dist, _np_ring_distances(grid, observed, n))


def test_grid_geometry_follows_the_observation_operator():
    from filterax.primitives import LinearObs, every_nth

    geometry = presets.grid_geometry(40, every_nth(40, 2))
    np.testing.assert_array_equal(geometry["obs_coords"], np.arange(0.0, 40.0, 2.0)[:, None])
    np.testing.assert_array_equal(geometry["state_coords"], np.arange(40.0)[:, None])
    geometry = presets.grid_geometry(10, IndexObs(jnp.array([9, 0, 3])))
    np.testing.assert_array_equal(geometry["obs_coords"], [[9.0], [0.0], [3.0]])
    # A StateSpaceModel accepts it as keyword arguments.
    ssm = StateSpaceModel(
        Lorenz96(n=40),
        every_nth(40, 2),
        1.0,
        dt_obs=0.05,
        x0_mean=jnp.zeros(40),
        x0_cov=1.0,
        **presets.grid_geometry(40, every_nth(40, 2)),
    )
    assert ssm.obs_coords.shape == (20, 1)
    with pytest.raises(TypeError, match="IdentityObs, IndexObs"):
        presets.grid_geometry(3, LinearObs(jnp.eye(3)))


def test_presets_built_separately_reuse_the_compiled_program():
    # The distance is static configuration: equal PeriodicDistance objects hash alike, so a
    # second, separately built preset reuses the program compiled for the first.
    from filterax.primitives import pairwise_distances

    traces = []

    @eqx.filter_jit
    def local_weights(model, x):
        traces.append(None)
        dist = pairwise_distances(model.state_coords, model.obs_coords, model.distance)
        return jnp.exp(-dist) @ x

    x = jnp.ones(40)
    first = local_weights(presets.lorenz96_sakov2008(), x)
    second = local_weights(presets.lorenz96_sakov2008(), x)
    assert len(traces) == 1
    np.testing.assert_array_equal(first, second)
