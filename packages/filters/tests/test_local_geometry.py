"""Localising kernels take the model's geometry (issue "One cycled-DA contract", §4).

`EnsembleFilter` hands an `AbstractLocalFilter` (LETKF) the model's ``state_coords``,
``obs_coords`` and ``distance``; entries of its ``context`` and an explicit
``LETKF(distance=...)`` override them. The references are the explicit spellings the LETKF
had before (periodic distance and coordinates passed by hand, on a model without geometry):
the same floating-point program, so every comparison is bit-identical (``array_equal``).
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import presets

PERIODIC40 = functools.partial(fxp.periodic, period=40.0)
# DAPPER's Lorenz-96 LETKF, loc_rad = 4: Gaspari-Cohn half-width c = 1.82 * 4 = 7.28.
RADIUS = fxp.dapper_radius_to_gc_halfwidth(4.0)
N_CYCLES = 20
N_E = 7


@pytest.fixture(scope="module")
def l96():
    ssm = presets.lorenz96_sakov2008()
    xp = ssm.simulate(jax.random.key(0), N_CYCLES)
    ens0 = ssm.initial_ensemble(jax.random.key(1), N_E)
    return ssm, xp, ens0


def _bare(ssm):
    # The same model without geometry (what `assimilate` builds).
    return fxp.Model(ssm.dynamics, ssm.obs_op, ssm.obs_noise, t0=ssm.t0)


def _run(method, model, xp, ens0):
    return ff.run(
        method, model, ens0, xp.observations, xp.times, key=jax.random.key(2), save="ensembles"
    )


def _assert_same_run(a, b):
    for name in ("analyses", "forecast_mean", "analysis_mean", "analysis_spread"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.log_likelihood, b.log_likelihood)


def test_letkf_takes_the_periodic_geometry_from_the_preset(l96):
    ssm, xp, ens0 = l96
    infl = fxp.MultiplicativeInflator(1.04)
    # No distance, no coordinates: everything comes from the model.
    implicit = _run(ff.EnsembleFilter(ff.LETKF(RADIUS), inflator=infl), ssm, xp, ens0)
    grid = jnp.arange(40.0)[:, None]
    explicit = _run(
        ff.EnsembleFilter(
            ff.LETKF(RADIUS, distance=PERIODIC40),
            inflator=infl,
            context={"state_coords": grid, "obs_coords": grid},
        ),
        _bare(ssm),
        xp,
        ens0,
    )
    _assert_same_run(implicit, explicit)
    # The Euclidean LETKF (what the user silently got) differs: the periodic distance
    # was used.
    euclid = _run(
        ff.EnsembleFilter(ff.LETKF(RADIUS, distance=fxp.euclidean), inflator=infl),
        ssm,
        xp,
        ens0,
    )
    assert not np.allclose(euclid.analyses, implicit.analyses, atol=1e-6)
    # The same override given as context instead of a LETKF field: the same run.
    by_context = _run(
        ff.EnsembleFilter(ff.LETKF(RADIUS), inflator=infl, context={"distance": fxp.euclidean}),
        ssm,
        xp,
        ens0,
    )
    _assert_same_run(euclid, by_context)


def test_ring_edge_sees_29_local_observations_not_15():
    # The numbers: L96 N_x = 40, DAPPER loc_rad = 4 -> GC half-width 7.28, support
    # 2c = 14.56, so sites at ring distance 0..14 on both sides are local: 1 + 2 * 14 = 29 at
    # every site. Euclidean distances cut the ring open: site 0 sees only sites 0..14.
    ssm = presets.lorenz96_sakov2008()
    X = 3.0 + jax.random.normal(jax.random.key(0), (N_E, 40))
    y = jnp.zeros(40)
    context = fxp.geometry_context(ssm)
    ring = ff.LETKF(RADIUS).analysis(None, X, y, ssm.obs_op, ssm.obs_noise, **context)
    np.testing.assert_array_equal(ring.info.n_local_obs, np.full(40, 29))
    flat = ff.LETKF(RADIUS, distance=fxp.euclidean).analysis(
        None, X, y, ssm.obs_op, ssm.obs_noise, **context
    )
    n_flat = np.asarray(flat.info.n_local_obs)
    assert n_flat[0] == n_flat[-1] == 15 and n_flat[20] == 29


def test_localising_kernel_on_a_model_without_geometry_is_a_clear_error(l96):
    ssm, xp, ens0 = l96
    with pytest.raises(ValueError, match="state_coords and obs_coords are missing") as err:
        _run(ff.EnsembleFilter(ff.LETKF(RADIUS)), _bare(ssm), xp, ens0)
    message = str(err.value)
    assert "Give the model state_coords" in message and "context=" in message
    # Half the geometry is still an error, naming the missing half.
    grid = jnp.arange(40.0)
    with pytest.raises(ValueError, match="obs_coords is missing"):
        _run(
            ff.EnsembleFilter(ff.LETKF(RADIUS), context={"state_coords": grid}),
            _bare(ssm),
            xp,
            ens0,
        )


# What the probes were traced with, by tag (a static tag per test keeps the compiled-program
# caches of different tests apart; a list field would not be hashable static data).
_SEEN: dict[str, list] = {}


class _Probe(fxp.AbstractLocalFilter):
    """A localising kernel that records the context it is traced with and writes the state
    and observation coordinates it got into members 0 and 1 (the values are traced)."""

    tag: str = eqx.field(static=True)

    def analysis(self, key, forecast, obs, obs_op, obs_noise, **context):
        del key, obs, obs_op, obs_noise
        _SEEN.setdefault(self.tag, []).append(context)
        particles = forecast.at[0].set(jnp.ravel(context["state_coords"]))
        particles = particles.at[1].set(jnp.ravel(context["obs_coords"]))
        return fxp.Analysis(particles, jnp.zeros((), forecast.dtype))


class _GlobalProbe(fxp.AbstractSequentialFilter):
    """A global kernel that records the context it is traced with."""

    tag: str = eqx.field(static=True)

    def analysis(self, key, forecast, obs, obs_op, obs_noise, **context):
        del key, obs, obs_op, obs_noise
        _SEEN.setdefault(self.tag, []).append(context)
        return fxp.Analysis(forecast, jnp.zeros((), forecast.dtype))


def test_context_entries_override_the_model_and_others_pass_through(l96):
    ssm, xp, ens0 = l96
    shifted = jnp.arange(40.0)[:, None] + 0.5
    table = jnp.zeros((40, 3), jnp.int32)
    context = {"obs_coords": shifted, "distance": fxp.haversine, "local_obs_indices": table}
    out = _run(ff.EnsembleFilter(_Probe("override"), context=context), ssm, xp, ens0)
    (got,) = _SEEN["override"]
    assert set(got) == {"state_coords", "obs_coords", "distance", "local_obs_indices"}
    assert got["distance"] is fxp.haversine
    assert got["local_obs_indices"].shape == table.shape
    # The model's state coordinates, the context's observation coordinates.
    np.testing.assert_array_equal(out.analyses[-1, 0], ssm.state_coords[:, 0])
    np.testing.assert_array_equal(out.analyses[-1, 1], shifted[:, 0])


def test_kernels_that_do_not_localise_get_no_geometry(l96):
    ssm, xp, ens0 = l96
    _run(ff.EnsembleFilter(_GlobalProbe("global")), ssm, xp, ens0)
    assert _SEEN["global"] == [{}]
    # ... and a global filter's run on a model with geometry is the run without it.
    with_geometry = _run(ff.EnsembleFilter(ff.ETKF()), ssm, xp, ens0)
    without = _run(ff.EnsembleFilter(ff.ETKF()), _bare(ssm), xp, ens0)
    _assert_same_run(with_geometry, without)


def test_presets_built_separately_reuse_the_compiled_run(l96):
    # The preset's distance is a hashable PeriodicDistance: a second, separately built preset
    # is the same static configuration, so `run` (an eqx.filter_jit) does not trace again.
    _, xp, ens0 = l96
    probe = ff.EnsembleFilter(_Probe("reuse"))
    _run(probe, presets.lorenz96_sakov2008(), xp, ens0)
    _run(probe, presets.lorenz96_sakov2008(), xp, ens0)
    (got,) = _SEEN["reuse"]
    assert got["distance"] == fxp.PeriodicDistance(40.0)
    # The counter does see a retrace: a model whose distance is a fresh functools.partial
    # each time (compared by identity) compiles again.
    ring = {"state_coords": jnp.arange(40.0), "obs_coords": jnp.arange(40.0)}
    for _ in range(2):
        model = fxp.Model(
            presets.lorenz96_sakov2008().dynamics,
            fxp.IdentityObs(),
            1.0,
            distance=functools.partial(fxp.periodic, period=40.0),
            **ring,
        )
        _run(probe, model, xp, ens0)
    assert len(_SEEN["reuse"]) == 3


@pytest.mark.parametrize("name", ["state_coords", "obs_coords"])
def test_non_finite_coordinates_are_refused(l96, name):
    # Regression: a NaN state or observation coordinate silently changed which observations
    # were local (a NaN distance fails every "<= cutoff" test). Refused with the index.
    ssm, xp, ens0 = l96
    coords = getattr(ssm, name)
    bad_model = eqx.tree_at(lambda m: getattr(m, name), ssm, coords.at[3].set(jnp.nan))
    method = ff.EnsembleFilter(ff.LETKF(radius=RADIUS))
    with pytest.raises(ValueError, match=rf"model.{name} must be finite.*index \(?3"):
        ff.run(method, bad_model, ens0, xp.observations, xp.times, key=jax.random.key(2))
    grid = jnp.arange(40.0)
    kwargs = {"state_coords": grid, "obs_coords": grid, "distance": PERIODIC40}
    kwargs[name] = grid.at[5].set(jnp.inf)
    with pytest.raises(ValueError, match=rf"`{name}` must be finite"):
        ff.LETKF(radius=RADIUS).analysis(None, ens0, xp.observations[0], ssm.obs_op,
                                         ssm.obs_noise, **kwargs)  # fmt: skip
    # Traced coordinates (a model built inside jit) make the analysis NaN: the driver reports
    # every cycle as failed (status 1), never a run with other local observations.
    status = np.asarray(
        jax.block_until_ready(
            jax.jit(
                lambda c: (
                    ff.run(
                        method,
                        eqx.tree_at(lambda m: getattr(m, name), ssm, c),
                        ens0,
                        xp.observations,
                        xp.times,
                        key=jax.random.key(2),
                        throw=False,
                    ).status
                )  # fmt: skip
            )(coords.at[3].set(jnp.nan))
        )
    )
    assert np.all(status == 1)
