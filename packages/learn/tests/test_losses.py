"""The loss zoo (filterax.learn._losses, _energy_score) against numpy formulas and finite
differences. float64 (the conftest enables x64)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.filters as ff
import filterax.learn as fl
import filterax.primitives as fxp

T, NE, NX = 6, 5, 3
H = np.array([[1.0, 0.0, 0.5], [0.0, 2.0, -1.0]])


def make_result(rng, *, status=None, save=True):
    """A RunResult with random rows (what the losses read), built by hand."""
    f = lambda *s: jnp.asarray(rng.normal(size=s))  # noqa: E731
    forecasts, analyses = f(T, NE, NX), f(T, NE, NX)
    cycle_status = jnp.zeros(T, jnp.int32) if status is None else jnp.asarray(status, jnp.int32)
    return ff.RunResult(
        forecast_mean=forecasts.mean(1),
        analysis_mean=analyses.mean(1),
        forecast_spread=jnp.abs(f(T)) + 0.5,
        analysis_spread=jnp.abs(f(T)) + 0.5,
        log_likelihood=f(T),
        state=None,
        forecasts=forecasts if save else None,
        analyses=analyses if save else None,
        diagnostics=None,
        times=jnp.arange(1.0, T + 1),
        cycle_status=cycle_status,
        status=jnp.max(cycle_status),
        first_failure=jnp.asarray(-1, jnp.int32),
        n_nonfinite=jnp.sum(cycle_status == 1).astype(jnp.int32),
        n_diverged=jnp.asarray(0, jnp.int32),
    )


def replace(result, **kw):
    return eqx.tree_at(lambda r: [getattr(r, k) for k in kw], result, list(kw.values()))


def check_grad(fun, x, atol, n_dirs=4, eps=1e-6):
    """Compare ``grad(fun)(x) . v`` with central finite differences along random directions
    ``v`` (float64: truncation ~eps^2 times the third derivative, round-off ~1e-16/eps, so
    ~1e-10 for eps = 1e-6), and check the gradient is finite."""
    fun = jax.jit(fun)
    grad = np.asarray(jax.jit(jax.grad(fun))(x))
    assert np.all(np.isfinite(grad))
    rng = np.random.default_rng(99)
    for _ in range(n_dirs):
        v = rng.normal(size=np.shape(x))
        fd = (float(fun(x + eps * v)) - float(fun(x - eps * v))) / (2 * eps)
        assert abs(float(np.sum(grad * v)) - fd) < atol, (np.sum(grad * v), fd)
    return grad


# ---- numpy references -------------------------------------------------------------------


def np_crps(ens, y, fair):
    n = ens.shape[0]
    skill = np.mean(np.abs(ens - y[None]), axis=0)
    pairs = np.abs(ens[:, None, :] - ens[None, :, :]).sum((0, 1))
    return skill - pairs / (2 * (n * (n - 1) if fair else n * n))


def np_energy(ens, y, fair):
    keep = np.isfinite(y)
    ens, y = ens[:, keep], y[keep]
    n = ens.shape[0]
    skill = np.mean([np.linalg.norm(x - y) for x in ens])
    pairs = sum(np.linalg.norm(a - b) for a in ens for b in ens)
    return skill - pairs / (2 * (n * (n - 1) if fair else n * n))


# ---- innovation NLL ---------------------------------------------------------------------


def test_innovation_nll_matches_numpy_sum_burn_in_and_normalisation():
    rng = np.random.default_rng(0)
    res = make_result(rng)
    ll = np.asarray(res.log_likelihood)
    obs = rng.normal(size=(T, 2))
    obs[3, 1] = np.nan
    obs[0, :] = np.nan
    # Exact sums of a few float64 numbers: 1e-12.
    assert abs(fl.innovation_nll(res) + ll.sum()) < 1e-12
    assert abs(fl.innovation_nll(res, burn_in=2) + ll[2:].sum()) < 1e-12
    n_obs = np.isfinite(obs[2:]).sum()
    val = fl.innovation_nll(res, observations=obs, normalize=True, burn_in=2)
    assert abs(val + ll[2:].sum() / n_obs) < 1e-12
    # Gradient wrt the rows: -1 on scored rows, 0 in the burn-in (analytic).
    g = jax.grad(lambda r: fl.innovation_nll(replace(res, log_likelihood=r), burn_in=2))(
        res.log_likelihood
    )
    np.testing.assert_array_equal(np.asarray(g), [0, 0, -1, -1, -1, -1])


# ---- observation MSE --------------------------------------------------------------------


def test_observation_mse_matches_numpy_with_missing_observations():
    rng = np.random.default_rng(1)
    res = make_result(rng)
    obs = rng.normal(size=(T, 2))
    obs[2, 0] = np.nan
    obs[4, :] = np.nan
    xf = np.asarray(res.forecast_mean)
    err = (obs - xf @ H.T)[1:]
    ref = np.nanmean(err**2)  # missing entries dropped from the mean
    got = fl.observation_mse(res, obs, jnp.asarray(H), burn_in=1)
    assert abs(float(got) - ref) < 1e-12
    # Linear H: the mean of H over members equals H of the mean (to round-off).
    got_members = fl.observation_mse(res, obs, jnp.asarray(H), of="members", burn_in=1)
    assert abs(float(got_members) - ref) < 1e-12
    # Nonlinear H: the two differ, each equals its numpy formula.
    h = lambda x: jnp.stack([x[0] ** 2, jnp.sin(x[1])])  # noqa: E731
    ens = np.asarray(res.forecasts)
    pred_members = np.stack([ens[..., 0] ** 2, np.sin(ens[..., 1])], -1).mean(1)
    pred_mean = np.stack([xf[:, 0] ** 2, np.sin(xf[:, 1])], -1)
    for of, pred in (("members", pred_members), ("mean", pred_mean)):
        ref = np.nanmean((obs - pred) ** 2)
        assert abs(float(fl.observation_mse(res, obs, h, of=of)) - ref) < 1e-12


def test_observation_mse_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    res = make_result(rng)
    obs = rng.normal(size=(T, 2))
    obs[1, 1] = np.nan
    h = lambda x: jnp.stack([x[0] * x[2], jnp.tanh(x[1])])  # noqa: E731

    def loss(ens):
        return fl.observation_mse(replace(res, forecasts=ens), obs, h, of="members", burn_in=1)

    # Smooth loss: central FD error ~1e-10 (see check_grad); 1e-7 leaves a wide margin. The
    # gradient is finite: the NaN observation leaks into no gradient.
    check_grad(loss, res.forecasts, atol=1e-7)


# ---- CRPS -------------------------------------------------------------------------------


@pytest.mark.parametrize("fair", [True, False])
def test_crps_loss_matches_numpy_double_sum(fair):
    rng = np.random.default_rng(3)
    res = make_result(rng)
    truth = rng.normal(size=(T, NX))
    truth[2, 1] = np.nan
    ens = np.asarray(res.analyses)
    rows = np.stack([np_crps(ens[k], np.nan_to_num(truth[k]), fair) for k in range(T)])
    ref = rows[1:][np.isfinite(truth[1:])].mean()
    got = fl.crps_loss(res, truth, which="analysis", fair=fair, burn_in=1)
    # O(N_e^2) sums of O(1) terms in float64: 1e-12.
    assert abs(float(got) - ref) < 1e-12
    # In observation space: the members pass through H.
    obs = rng.normal(size=(T, 2))
    ensy = ens @ H.T
    rows = np.stack([np_crps(ensy[k], obs[k], fair) for k in range(T)])
    got = fl.crps_loss(res, obs, obs_op=jnp.asarray(H), which="analysis", fair=fair)
    assert abs(float(got) - rows.mean()) < 1e-12


def test_crps_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(4)
    res = make_result(rng)
    truth = rng.normal(size=(T, NX))
    truth[0, 0] = np.nan

    def loss(ens):
        return fl.crps_loss(replace(res, forecasts=ens), truth, fair=True)

    # Piecewise linear in the members; with continuous random members no kink lies within
    # eps = 1e-6 of the point, so central FD is exact up to round-off (~1e-10).
    check_grad(loss, res.forecasts, atol=1e-8)


# ---- energy score -----------------------------------------------------------------------


@pytest.mark.parametrize("fair", [True, False])
def test_energy_score_matches_numpy_double_sum(fair):
    rng = np.random.default_rng(5)
    ens = rng.normal(size=(7, 4))
    y = rng.normal(size=4)
    # Sums of 49 norms in float64: 1e-12.
    assert abs(float(fl.energy_score(ens, y, fair=fair)) - np_energy(ens, y, fair)) < 1e-12
    y[2] = np.nan  # missing component: dropped from every norm
    assert abs(float(fl.energy_score(ens, y, fair=fair)) - np_energy(ens, y, fair)) < 1e-12


@pytest.mark.parametrize("fair", [True, False])
def test_energy_score_is_the_crps_in_one_dimension(fair):
    # With one component the Euclidean norm is |.|, so the energy score IS the kernel form of
    # the CRPS (Gneiting & Raftery 2007, eqs. 21-22); the two codes compute it differently
    # (pair sum vs sorted ranks), so they agree to round-off: 1e-12.
    rng = np.random.default_rng(6)
    ens = rng.normal(size=(9, 1))
    y = rng.normal(size=1)
    crps = fxp.crps_ensemble(jnp.asarray(ens), jnp.asarray(y), fair=fair)[0]
    assert abs(float(fl.energy_score(ens, y, fair=fair)) - float(crps)) < 1e-12


def test_energy_score_gradient_finite_differences_and_coincident_members():
    rng = np.random.default_rng(7)
    ens = jnp.asarray(rng.normal(size=(6, 3)))
    y = jnp.asarray(rng.normal(size=3))
    # Smooth away from coincident points: central FD error ~1e-10; 1e-7 margin.
    check_grad(lambda e: fl.energy_score(e, y), ens, atol=1e-7)
    # A member equal to the target and a duplicated member: finite gradient (0/0 guarded).
    ens2 = ens.at[0].set(y).at[1].set(ens[2])
    assert np.all(np.isfinite(np.asarray(jax.grad(fl.energy_score)(ens2, y))))


def test_energy_score_loss_averages_scored_cycles():
    rng = np.random.default_rng(8)
    res = make_result(rng)
    obs = rng.normal(size=(T, 2))
    obs[3, :] = np.nan  # a cycle with nothing observed is not scored
    obs[4, 0] = np.nan
    ensy = np.asarray(res.forecasts) @ H.T
    rows = [np_energy(ensy[k], obs[k], True) for k in range(1, T) if k != 3]
    got = fl.energy_score_loss(res, obs, obs_op=jnp.asarray(H), burn_in=1)
    assert abs(float(got) - np.mean(rows)) < 1e-12

    def loss(ens):
        return fl.energy_score_loss(replace(res, forecasts=ens), obs, obs_op=jnp.asarray(H))

    check_grad(loss, res.forecasts, atol=1e-7)


# ---- spread-skill -----------------------------------------------------------------------


def test_spread_skill_loss_matches_numpy_and_gradient():
    rng = np.random.default_rng(9)
    res = make_result(rng)
    truth = rng.normal(size=(T, NX))
    xa = np.asarray(res.analysis_mean)
    s = np.asarray(res.analysis_spread)
    err2 = ((xa - truth) ** 2).mean(1)
    ref = (0.5 * np.log((6 / 5) * np.sum(s[2:] ** 2) / np.sum(err2[2:]))) ** 2
    got = fl.spread_skill_loss(res, truth, ensemble_size=5, burn_in=2)
    assert abs(float(got) - ref) < 1e-12

    def loss(spread):
        return fl.spread_skill_loss(replace(res, analysis_spread=spread), truth)

    check_grad(loss, res.analysis_spread, atol=1e-8)
    # Zero exactly when the time-mean spread equals the time-mean error (calibration).
    calibrated = replace(res, analysis_spread=jnp.asarray(np.sqrt(err2)))
    assert float(fl.spread_skill_loss(calibrated, truth)) < 1e-28


# ---- failures, NaN, validation ----------------------------------------------------------


def test_a_failed_cycle_makes_every_loss_nan_and_check_raises():
    rng = np.random.default_rng(10)
    # Cycle 3 failed (status 1): its rows are NaN, and the observations there are missing,
    # so masking alone would hide it; the status makes the loss NaN anyway.
    res = make_result(rng, status=[0, 0, 0, 1, 1, 1])
    nan_rows = lambda x: x.at[3:].set(jnp.nan)  # noqa: E731
    res = replace(
        res,
        forecast_mean=nan_rows(res.forecast_mean),
        forecasts=nan_rows(res.forecasts),
        log_likelihood=nan_rows(res.log_likelihood),
    )
    obs = rng.normal(size=(T, 2))
    obs[3:, :] = np.nan
    truth = rng.normal(size=(T, NX))
    losses = {
        "nll": lambda r: fl.innovation_nll(r),
        "mse": lambda r: fl.observation_mse(r, obs, jnp.asarray(H)),
        "crps": lambda r: fl.crps_loss(r, obs, obs_op=jnp.asarray(H)),
        "es": lambda r: fl.energy_score_loss(r, obs, obs_op=jnp.asarray(H)),
        "ss": lambda r: fl.spread_skill_loss(r, truth, which="forecast"),
    }
    for name, fn in losses.items():
        assert np.isnan(float(fn(res))), name
    with pytest.raises(Exception, match="first_failure"):
        jax.jit(lambda r: fl.observation_mse(r, obs, jnp.asarray(H), check=True))(res)
    # A failure inside the burn-in does not affect the scored part.
    ok = make_result(rng, status=[1, 0, 0, 0, 0, 0])
    assert np.isfinite(float(fl.innovation_nll(ok, burn_in=1, check=True)))


def test_bad_arguments_raise_with_instructions():
    rng = np.random.default_rng(11)
    res = make_result(rng)
    stats_only = make_result(rng, save=False)
    truth = rng.normal(size=(T, NX))
    with pytest.raises(ValueError, match="burn_in"):
        fl.innovation_nll(res, burn_in=T)
    with pytest.raises(TypeError, match="burn_in"):
        fl.innovation_nll(res, burn_in=1.0)
    with pytest.raises(ValueError, match="save="):
        fl.crps_loss(stats_only, truth)
    with pytest.raises(ValueError, match="shape"):
        fl.crps_loss(res, truth[:, :2])
    with pytest.raises(ValueError, match="observations="):
        fl.innovation_nll(res, normalize=True)
    with pytest.raises(ValueError, match="missing"):
        fl.observation_mse(res, np.full((T, 2), np.nan), jnp.asarray(H))
    with pytest.raises(TypeError, match="RunResult"):
        fl.innovation_nll(res.log_likelihood)


def test_float32_losses_keep_their_dtype():
    rng = np.random.default_rng(12)
    res = jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float32) if eqx.is_inexact_array(x) else x, make_result(rng)
    )
    truth = rng.normal(size=(T, NX)).astype(np.float32)
    for val in (
        fl.crps_loss(res, truth),
        fl.energy_score_loss(res, truth),
        fl.spread_skill_loss(res, truth),
        fl.observation_mse(res, truth, jnp.eye(3, dtype=jnp.float32)),
    ):
        assert val.dtype == jnp.float32 and np.isfinite(float(val))


# ---- through a real run -----------------------------------------------------------------


def test_losses_through_an_etkf_run_differentiate_in_the_inflation_factor():
    # A deterministic ETKF (no rotation, no perturbed observations) on a 3-variable linear
    # model: every loss is a smooth function of the inflation factor, so reverse-mode through
    # `ff.run` must match central finite differences.
    A = jnp.asarray([[0.9, 0.2, 0.0], [-0.1, 0.95, 0.1], [0.05, 0.0, 0.85]])
    Hm = jnp.asarray([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    model = fxp.Model(
        dynamics=lambda x, t0, t1: A @ x, obs_op=Hm, obs_noise=0.3, process_noise=0.05
    )
    rng = np.random.default_rng(13)
    n_t = 12
    truth = np.zeros((n_t, 3))
    x = rng.normal(size=3)
    for k in range(n_t):
        x = np.asarray(A) @ x + np.sqrt(0.05) * rng.normal(size=3)
        truth[k] = x
    obs = truth @ np.asarray(Hm).T + np.sqrt(0.3) * rng.normal(size=(n_t, 2))
    obs[5, 1] = np.nan
    ens0 = jnp.asarray(rng.normal(size=(6, 3)))
    times = jnp.arange(1.0, n_t + 1)

    def losses(infl):
        method = ff.EnsembleFilter(ff.ETKF(), inflator=fxp.MultiplicativeInflator(infl))
        out = ff.run(
            method, model, ens0, obs, times, key=jax.random.key(0), save="forecast_and_analysis"
        )
        return jnp.stack(
            [
                fl.innovation_nll(out, burn_in=2),
                fl.observation_mse(out, obs, Hm, burn_in=2),
                fl.crps_loss(out, truth, burn_in=2),
                fl.energy_score_loss(out, obs, obs_op=Hm, burn_in=2),
                fl.spread_skill_loss(out, truth, ensemble_size=6, burn_in=2),
            ]
        )

    infl = jnp.asarray(1.1)
    jac = jax.jit(jax.jacrev(losses))(infl)
    losses = jax.jit(losses)
    eps = 1e-5
    fd = (np.asarray(losses(infl + eps)) - np.asarray(losses(infl - eps))) / (2 * eps)
    assert np.all(np.isfinite(np.asarray(jac)))
    # Central FD with eps = 1e-5 on O(1)-curvature losses: truncation ~1e-10, round-off
    # ~1e-11; CRPS / ES are piecewise smooth, no kink within eps for this draw. 1e-6 relative.
    np.testing.assert_allclose(np.asarray(jac), fd, rtol=1e-6, atol=1e-8)
    assert np.all(np.abs(fd) > 1e-4)  # the factor really changes every loss


def test_losses_vmap_over_targets_like_a_loop():
    rng = np.random.default_rng(14)
    res = make_result(rng)
    truths = jnp.asarray(rng.normal(size=(3, T, NX)))
    for fn in (fl.crps_loss, fl.energy_score_loss, fl.spread_skill_loss):
        batched = np.asarray(jax.vmap(lambda tr, fn=fn: fn(res, tr, burn_in=1))(truths))
        looped = np.asarray([float(fn(res, tr, burn_in=1)) for tr in truths])
        # Same arithmetic batched or not: round-off only.
        np.testing.assert_allclose(batched, looped, rtol=1e-12)
