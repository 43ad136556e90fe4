"""The amortised analysis network (`EquivariantEnsembleNet`, `AmortisedAnalysis`,
`fit_amortised`): equivariance, the zero-initialised start, missing observations, the
driver's non-finite status, training, reproducibility."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax
import pytest

import filterax.filters as ff
import filterax.learn as fl
import filterax.primitives as fxp
from filterax.zoo import presets


def _randomise_last_layer(net, key, scale=0.5):
    """The zero-initialised last layer of rho, replaced by random numbers (a trained net)."""
    last = net.rho.layers[-1]
    kw, kb = jax.random.split(key)
    return eqx.tree_at(
        lambda n: (n.rho.layers[-1].weight, n.rho.layers[-1].bias),
        net,
        (
            scale * jax.random.normal(kw, last.weight.shape, last.weight.dtype),
            scale * jax.random.normal(kb, last.bias.shape, last.bias.dtype),
        ),
    )


def _net(n_x, radius, key=0, width=8, depth=1, trained=True):
    net = fl.EquivariantEnsembleNet(
        n_x,
        width,
        depth,
        key=jax.random.key(key),
        radius=radius,
        state_scale=5.0,
        anomaly_scale=1.0,
        output_scale=0.3,
    )
    return _randomise_last_layer(net, jax.random.key(key + 100)) if trained else net


def _ensembles(n_e, n_x, seed=0):
    rng = np.random.default_rng(seed)
    xf = rng.normal(size=(n_e, n_x)) * 2.0 + 1.0
    xb = xf + 0.3 * rng.normal(size=(n_e, n_x))
    return jnp.asarray(xf), jnp.asarray(xb)


def _numpy_mlp(mlp, x):
    for layer in mlp.layers[:-1]:
        x = np.asarray(layer.weight) @ x + np.asarray(layer.bias)
        x = np.asarray(jax.nn.gelu(jnp.asarray(x)))
    last = mlp.layers[-1]
    return np.asarray(last.weight) @ x + np.asarray(last.bias)


@pytest.mark.parametrize("radius", [None, 0, 2])
def test_network_matches_a_numpy_deep_sets_forward_pass(radius):
    n_e, n_x = 5, 8
    net = _net(n_x, radius)
    xf, xb = _ensembles(n_e, n_x)
    xf_np, xb_np = np.asarray(xf), np.asarray(xb)
    feats = np.stack([xf_np / 5.0, xf_np - xf_np.mean(0), xb_np - xf_np], axis=-1)  # (N_e,N_x,3)
    if radius is None:
        u = feats.reshape(n_e, 1, -1)
    else:
        u = np.stack(
            [
                np.concatenate([feats[:, (s + o) % n_x] for o in range(-radius, radius + 1)], -1)
                for s in range(n_x)
            ],
            axis=1,
        )
    h = np.array([[_numpy_mlp(net.phi, u[i, s]) for s in range(u.shape[1])] for i in range(n_e)])
    pooled = h.mean(axis=0)
    out = np.array(
        [
            [
                _numpy_mlp(net.rho, np.concatenate([u[i, s], h[i, s], pooled[s]]))
                for s in range(u.shape[1])
            ]
            for i in range(n_e)
        ]
    )
    expected = 0.3 * out.reshape(n_e, n_x)
    # The same float64 operations in a different order: agreement to round-off.
    np.testing.assert_allclose(net(xf, xb), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("radius", [None, 1])
def test_network_is_permutation_equivariant_over_members(radius):
    net = _net(6, radius)
    xf, xb = _ensembles(7, 6)
    perm = np.random.default_rng(1).permutation(7)
    # A permutation only reorders the terms of the pooled mean: equal to round-off (1e-12).
    np.testing.assert_allclose(net(xf[perm], xb[perm]), net(xf, xb)[perm], atol=1e-12, rtol=0)


def test_stencil_network_is_translation_equivariant_over_sites():
    net = _net(10, 2)
    xf, xb = _ensembles(4, 10)
    # Rolling the periodic grid by 3 sites rolls the correction: the same arithmetic per site.
    np.testing.assert_allclose(
        net(jnp.roll(xf, 3, axis=1), jnp.roll(xb, 3, axis=1)),
        jnp.roll(net(xf, xb), 3, axis=1),
        atol=1e-12,
        rtol=0,
    )


def _identity(x):
    return x


def _linear_problem(n_x=4, seed=0):
    rng = np.random.default_rng(seed)
    obs_noise = lx.DiagonalLinearOperator(jnp.asarray(rng.uniform(0.5, 1.5, n_x)))
    return obs_noise


def test_amortised_analysis_is_permutation_equivariant_with_an_etkf_base():
    n_e, n_x = 6, 4
    kernel = fl.AmortisedAnalysis(ff.ETKF(), _net(n_x, None))
    xf, _ = _ensembles(n_e, n_x, seed=3)
    obs = jnp.asarray([0.5, -1.0, 2.0, 0.3])
    noise = _linear_problem(n_x)
    perm = np.random.default_rng(2).permutation(n_e)
    analyse = eqx.filter_jit(lambda x: kernel.analysis(None, x, obs, _identity, noise).particles)
    a, b = analyse(xf), analyse(xf[perm])
    # The ETKF's symmetric square root commutes with member permutations in exact arithmetic;
    # an eigen-decomposition of a permuted matrix differs by round-off amplified by its
    # conditioning (~1e2 here): 1e-10.
    np.testing.assert_allclose(b, a[perm], atol=1e-10, rtol=0)


def _l63_twin(n_times, seed=0):
    ssm = presets.lorenz63_sakov2012()
    xp = ssm.simulate(jax.random.key(seed), n_times)
    return ssm, xp


def test_zero_initialised_correction_is_exactly_the_base_filter():
    ssm, xp = _l63_twin(30)
    x0 = ssm.initial_ensemble(jax.random.key(1), 5)
    infl = fxp.MultiplicativeInflator(1.05)
    base = ff.EnsembleFilter(ff.ETKF(), inflator=infl, rotate=True)
    amortised = ff.EnsembleFilter(
        fl.AmortisedAnalysis(ff.ETKF(), _net(3, None, trained=False)), inflator=infl, rotate=True
    )
    rb = ff.run(base, ssm, x0, xp.observations, xp.times, key=jax.random.key(2), save="ensembles")
    ra = ff.run(
        amortised, ssm, x0, xp.observations, xp.times, key=jax.random.key(2), save="ensembles"
    )
    # The correction is exactly 0.0 (zero weights and bias), so the same arithmetic: 1e-12
    # (in fact bit-identical) over 30 chaotic cycles.
    np.testing.assert_allclose(ra.analyses, rb.analyses, atol=1e-12, rtol=0)
    np.testing.assert_allclose(ra.log_likelihood, rb.log_likelihood, atol=1e-12, rtol=0)


def test_missing_observations_get_zero_weight():
    # Observing components (0, 2) of 3 with component 1 NaN == the problem without it.
    n_e = 6
    net = _net(3, None)
    kernel = fl.AmortisedAnalysis(ff.ETKF(), net)
    xf, _ = _ensembles(n_e, 3, seed=5)
    r = jnp.asarray([0.7, 1.3, 0.9])
    obs = jnp.asarray([1.0, jnp.nan, -0.5])
    keep = jnp.asarray([0, 2])
    full = eqx.filter_jit(kernel.analysis)(
        None, xf, obs, _identity, lx.DiagonalLinearOperator(r)
    ).particles
    reduced = eqx.filter_jit(kernel.analysis)(
        None, xf, obs[keep], lambda x: x[keep], lx.DiagonalLinearOperator(r[keep])
    ).particles
    assert bool(jnp.all(jnp.isfinite(full)))
    # Two routes through the same ETKF algebra (zero-weight rows vs removed rows): 1e-12.
    np.testing.assert_allclose(full, reduced, atol=1e-12, rtol=0)
    # The network did change the analysis (else the test would not test it).
    base = eqx.filter_jit(ff.ETKF().analysis)(
        None, xf, obs, _identity, lx.DiagonalLinearOperator(r)
    ).particles
    assert float(jnp.max(jnp.abs(full - base))) > 1e-2


def test_nonfinite_network_output_makes_the_driver_report_nonfinite():
    ssm, xp = _l63_twin(20)
    x0 = ssm.initial_ensemble(jax.random.key(1), 5)
    net = _net(3, None)
    bad = eqx.tree_at(
        lambda n: n.rho.layers[-1].bias, net, net.rho.layers[-1].bias.at[1].set(jnp.inf)
    )
    method = ff.EnsembleFilter(fl.AmortisedAnalysis(ff.ETKF(), bad))
    out = ff.run(method, ssm, x0, xp.observations, xp.times, key=jax.random.key(2), throw=False)
    assert int(out.status) == ff.RunResult.NONFINITE
    assert int(out.first_failure) == 0
    assert bool(jnp.all(jnp.isnan(out.analysis_mean)))
    # Frozen: the state is the initial ensemble, never the non-finite analysis.
    np.testing.assert_array_equal(out.state.particles, x0)
    with pytest.raises(Exception, match="non-finite"):
        ff.run(method, ssm, x0, xp.observations, xp.times, key=jax.random.key(2))


def test_training_lowers_the_window_crps_and_same_key_gives_the_same_result():
    ssm, xp = _l63_twin(100)
    n_e = 5
    x0 = ssm.initial_ensemble(jax.random.key(1), n_e)
    base = ff.EnsembleFilter(ff.ETKF())  # N_e = 5, no inflation: under-dispersed, room to learn
    reference = ff.run(
        base, ssm, x0, xp.observations, xp.times, key=jax.random.key(2), save="ensembles"
    ).analyses
    net = fl.EquivariantEnsembleNet(
        3, 16, 1, key=jax.random.key(3), state_scale=10.0, anomaly_scale=1.0, output_scale=0.3
    )
    method = ff.EnsembleFilter(fl.AmortisedAnalysis(ff.ETKF(), net))
    starts = jnp.arange(1, 98, 4)  # 25 fixed windows of 2 cycles: a deterministic objective
    kwargs = dict(optimizer=optax.adam(3e-2), window=2, batch=1, starts=starts)
    args = (method, ssm, reference, xp.truth, xp.observations, xp.times)
    out = fl.fit_amortised(*args, n_steps=30, key=jax.random.key(4), **kwargs)
    assert out.status == 0 and out.n_steps_done == 30

    # The first loss is the base filter's (zero correction): recompute it independently with
    # the base ETKF run window by window and `crps_loss` (same arithmetic: 1e-12).
    def base_window(s):
        sl = slice(s, s + 2)
        r = ff.run(
            base, ssm, reference[s - 1], xp.observations[sl], xp.times[sl],
            key=jax.random.key(0), t0=xp.times[s - 1], save="ensembles",
        )  # fmt: skip
        return float(fl.crps_loss(r, xp.truth[sl], which="analysis"))

    expected0 = np.mean([base_window(int(s)) for s in starts])
    assert float(out.losses[0]) == pytest.approx(expected0, abs=1e-12)
    # Measured 0.438 -> 0.223 after 30 Adam steps (factor 0.51); asserted <= 0.65 x, with
    # margin for platform round-off along the optimisation.
    assert float(out.losses[-1]) <= 0.65 * float(out.losses[0]), out.losses
    # Same key, same result: a second (shorter) call retraces the same steps bit for bit.
    again = fl.fit_amortised(*args, n_steps=3, key=jax.random.key(4), **kwargs)
    np.testing.assert_array_equal(again.losses, out.losses[:3])
    # ... and a rotated run with the trained network is reproducible from its key.
    rotated = ff.EnsembleFilter(out.params.kernel, rotate=True)
    r1 = ff.run(rotated, ssm, x0, xp.observations, xp.times, key=jax.random.key(9))
    r2 = ff.run(rotated, ssm, x0, xp.observations, xp.times, key=jax.random.key(9))
    np.testing.assert_array_equal(r1.analysis_mean, r2.analysis_mean)


def test_float32_runs_in_float32():
    ssm, xp = _l63_twin(10)
    net = fl.EquivariantEnsembleNet(
        3, 8, 1, key=jax.random.key(0), state_scale=10.0, dtype=jnp.float32
    )
    net = _randomise_last_layer(net, jax.random.key(1), scale=0.1)
    kernel = fl.AmortisedAnalysis(ff.ETKF(), net)
    xf = ssm.initial_ensemble(jax.random.key(1), 5).astype(jnp.float32)
    a = eqx.filter_jit(kernel.analysis)(
        None, xf, xp.observations[0].astype(jnp.float32), ssm.obs_op, ssm.obs_noise
    )
    assert a.particles.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(a.particles)))


def test_bad_arguments_raise_with_a_message():
    with pytest.raises(ValueError, match="radius"):
        fl.EquivariantEnsembleNet(4, 8, 1, key=jax.random.key(0), radius=3)
    with pytest.raises(ValueError, match="state_scale"):
        fl.EquivariantEnsembleNet(4, 8, 1, key=jax.random.key(0), state_scale=-1.0)
    net = _net(4, None)
    with pytest.raises(ValueError, match="N_x=4"):
        net(jnp.zeros((5, 3)), jnp.zeros((5, 3)))
    with pytest.raises(TypeError, match="analysis kernel"):
        fl.AmortisedAnalysis(object(), net)
    ssm, xp = _l63_twin(10)
    method = ff.EnsembleFilter(fl.AmortisedAnalysis(ff.ETKF(), _net(3, None)))
    with pytest.raises(ValueError, match="window"):
        fl.fit_amortised(
            method, ssm, jnp.zeros((10, 5, 3)), xp.truth, xp.observations, xp.times,
            optimizer=optax.adam(1e-3), n_steps=1, window=10, batch=1, key=jax.random.key(0),
        )  # fmt: skip


# --- a LOCAL base (LETKF) with a stencil network on a small Lorenz-96 ---------------------------


def _l96_twin(n_times, n_x=12, seed=0):
    from filterax.zoo import Lorenz96, StateSpaceModel

    ssm = StateSpaceModel(
        dynamics=Lorenz96(n=n_x, forcing=8.0, dt=0.05),
        obs_op=fxp.IdentityObs(),
        obs_noise=1.0,
        dt_obs=0.05,
        x0_mean=jnp.full(n_x, 2.0).at[0].set(6.0),
        x0_cov=4.0,
        **presets.grid_geometry(n_x, fxp.IdentityObs()),
    )
    return ssm, ssm.simulate(jax.random.key(seed), n_times)


def _local_amortised(ssm, net, infl=1.05):
    # The LETKF localises through the wrapper: its geometry comes in EnsembleFilter(context=).
    return ff.EnsembleFilter(
        fl.AmortisedAnalysis(ff.LETKF(radius=4.0), net),
        inflator=fxp.MultiplicativeInflator(infl),
        context=fxp.geometry_context(ssm),
    )


def test_stencil_net_on_a_letkf_base_starts_as_the_letkf_and_training_lowers_the_crps():
    ssm, xp = _l96_twin(80)
    x0 = ssm.initial_ensemble(jax.random.key(1), 6)
    # No inflation, N_e = 6 on 12 sites: an under-dispersed LETKF, room to learn. The base
    # LETKF takes the model's geometry from the driver itself.
    base = ff.EnsembleFilter(ff.LETKF(radius=4.0))
    kw = dict(key=jax.random.key(2), save="ensembles")
    reference = ff.run(base, ssm, x0, xp.observations, xp.times, **kw).analyses
    net = fl.EquivariantEnsembleNet(
        12, 8, 1, key=jax.random.key(3), radius=1, state_scale=3.6, anomaly_scale=0.5,
        output_scale=0.2,
    )  # fmt: skip
    method = _local_amortised(ssm, net, infl=1.0)
    untrained = ff.run(method, ssm, x0, xp.observations, xp.times, **kw).analyses
    # Zero correction: the same arithmetic, 1e-12 (bit-identical in practice) over 80 cycles.
    np.testing.assert_allclose(untrained, reference, atol=1e-12, rtol=0)

    starts = jnp.arange(20, 78, 12)  # 5 fixed windows of 2 cycles after the spin-up
    out = fl.fit_amortised(
        method, ssm, reference, xp.truth, xp.observations, xp.times,
        optimizer=optax.adam(1e-1), n_steps=15, window=2, batch=1, starts=starts,
        key=jax.random.key(4),
    )  # fmt: skip
    assert out.status == 0 and out.n_steps_done == 15
    # Measured 0.159 -> 0.115 after 15 Adam steps (factor 0.72); asserted <= 0.8 x, with
    # margin for platform round-off along the optimisation.
    assert float(out.losses[-1]) <= 0.8 * float(out.losses[0]), out.losses

    # Without the geometry the wrapper says how to pass it (a trace-time error).
    bare = ff.EnsembleFilter(fl.AmortisedAnalysis(ff.LETKF(radius=4.0), net))
    with pytest.raises(ValueError, match="geometry_context"):
        ff.run(bare, ssm, x0, xp.observations, xp.times, key=jax.random.key(2))
