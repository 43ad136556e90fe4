"""Particle filters against the Kalman filter on a 2-d linear-Gaussian model (float64).

Every comparison is Monte Carlo over independent keys; tolerances are k standard errors of
the replicate mean (k = 5: a false failure has odds ~ 1e-6) unless stated otherwise. The runs
are cached so that each filter compiles once for the whole module (CI budget).
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.learn import (
    AuxiliaryPF,
    BootstrapPF,
    EnKFProposalPF,
    OptimalProposalPF,
    ParticleDiagnostics,
    ParticleState,
)

K_SE = 5.0
A = np.array([[0.9, 0.2], [-0.1, 0.8]])
Q, R = 0.3, 0.5
T, N, KEYS = 8, 256, 64
FILTERS = {
    "bootstrap": BootstrapPF(),
    "auxiliary": AuxiliaryPF(),
    "optimal": OptimalProposalPF(),
    "enkf": EnKFProposalPF(),
    # DAPPER's PFxN_EnKF structure: 4 children per particle, the NER test picking the
    # bootstrap step in some cycles and the EnKF-proposal step in others.
    "enkf_x4": EnKFProposalPF(xn=4, ess_threshold=0.8),
}


class _Linear(eqx.Module):
    # A module, not a closure: models with different matrices share one compiled program.
    a: jax.Array

    def __call__(self, x, t0, t1):
        return self.a @ x


def _model(scale=1.0):
    return fxp.Model(_Linear(jnp.asarray(A) * scale), jnp.eye(2), R, process_noise=Q)


def _data():
    rng = np.random.default_rng(0)
    x, ys = np.zeros(2), []
    for _ in range(T):
        x = A @ x + np.sqrt(Q) * rng.standard_normal(2)
        ys.append(x + np.sqrt(R) * rng.standard_normal(2))
    y = np.array(ys)
    y[2, 1] = np.nan  # one missing entry ...
    y[5] = np.nan  # ... and one time with nothing observed
    return jnp.asarray(y), jnp.arange(1.0, T + 1.0)


Y, TIMES = _data()


@functools.cache
def _kalman():
    out = ff.run(
        ff.KalmanFilter(), _model(), ff.GaussianState(jnp.zeros(2), jnp.eye(2)), Y, TIMES,
        key=jax.random.key(0),
    )  # fmt: skip
    return out


@functools.cache
def _runner(name, n):
    method = FILTERS[name]

    def one(key, y):
        x0 = jax.random.normal(jax.random.fold_in(key, 99), (n, 2))  # the KF's prior N(0, I)
        out = ff.run(method, _model(), x0, y, TIMES, key=key, throw=False)
        return (
            out.log_likelihood.sum(),
            out.analysis_mean,
            out.analysis_spread,
            out.diagnostics.ess,
            out.status,
            out.first_failure,
            jnp.all(jnp.isfinite(out.state.particles)),
        )

    return jax.jit(jax.vmap(one, in_axes=(0, None)))


@functools.cache
def _runs(name, n=N, seed=1):
    keys = jax.random.split(jax.random.key(seed), KEYS)
    return [np.asarray(v) for v in _runner(name, n)(keys, Y)]


@pytest.mark.parametrize("name", list(FILTERS))
def test_evidence_unbiased_against_kalman(name):
    ll, *_, status, _, _ = _runs(name)
    assert np.all(status == 0)
    assert np.unique(ll).size == ll.size  # one estimate per key: the keys are used
    # Every filter's p̂(y_{1:T}) is unbiased (Del Moral 2004; Pitt 2002 for the APF): the
    # ratio to the exact Kalman evidence has mean 1. Missing entries/times are in the data.
    ratio = np.exp(ll - float(_kalman().log_likelihood.sum()))
    se = ratio.std(ddof=1) / np.sqrt(ratio.size)
    assert abs(ratio.mean() - 1.0) < K_SE * se, (ratio.mean(), se)
    assert se < 0.1  # and precise enough for the check to have power


def test_optimal_proposal_weights_less_variable_than_bootstrap():
    boot, opt = _runs("bootstrap"), _runs("optimal")
    # Variance of log p̂ over keys: 0.36^2 vs 0.19^2 in a pilot; the F-ratio of two 64-sample
    # variances exceeds 2 by chance with odds < 1e-3 when they are equal.
    assert boot[0].var() > 2.0 * opt[0].var()
    # Higher effective sample size at the analysis (mean over keys and cycles).
    assert opt[3].mean() > boot[3].mean()


def test_moments_converge_to_kalman():
    kf = _kalman()
    small, big = _runs("bootstrap"), _runs("bootstrap", n=16 * N, seed=2)

    def err(run):
        return np.sqrt(np.mean((run[1] - np.asarray(kf.analysis_mean)[None]) ** 2))

    kf_spread = np.asarray(kf.analysis_spread)

    def spread_err(run):
        return np.sqrt(np.mean((run[2] - kf_spread[None]) ** 2))

    # 16x the particles: Monte Carlo error / 4 in theory; > 2x smaller is a safe margin.
    assert err(big) < err(small) / 2.0
    assert spread_err(big) < spread_err(small) / 2.0
    # Absolute: posterior sd ~ 0.5, / sqrt(4096) ~ 0.008, times a PF inefficiency of ~ 3.
    assert err(big) < 0.05


def test_all_minus_inf_likelihood_freezes_the_run():
    # A finite observation so far out that every particle's likelihood underflows to 0
    # (residual^2 = 1e400 = inf): the cycle must be reported non-finite, never a number.
    y = Y.at[3, 0].set(1e200)
    keys = jax.random.split(jax.random.key(1), KEYS)
    _, _, _, _, status, first, state_finite = _runner("bootstrap", N)(keys, y)
    assert np.all(np.asarray(status) == ff.RunResult.NONFINITE)
    assert np.all(np.asarray(first) == 3)
    assert np.all(np.asarray(state_finite))


def test_single_run_outputs():
    x0 = jax.random.normal(jax.random.key(3), (N, 2))
    out = ff.run(
        BootstrapPF(ess_threshold=1.0), _model(), x0, Y, TIMES, key=jax.random.key(4),
        save="forecast_and_analysis",
    )  # fmt: skip
    # Same key, same result (other keys give other results: the evidence test).
    again = ff.run(
        BootstrapPF(ess_threshold=1.0), _model(), x0, Y, TIMES, key=jax.random.key(4),
        save="forecast_and_analysis",
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(again.log_likelihood), np.asarray(out.log_likelihood))
    assert isinstance(out.analyses, ParticleState) and out.analyses.particles.shape == (T, N, 2)
    assert isinstance(out.diagnostics, ParticleDiagnostics)
    assert bool(jnp.all(out.diagnostics.resampled))  # ess_threshold = 1: every cycle
    # Nothing observed at t_5: no reweighting, increment exactly 0, forecast = analysis.
    assert float(out.log_likelihood[5]) == 0.0
    np.testing.assert_allclose(out.analysis_mean[5], out.forecast_mean[5], atol=1e-12)
    # The weighted analysis mean is sum_i W_i x_i of the saved analysis (numpy).
    w = np.exp(np.asarray(out.analyses.log_weights[-1]))
    np.testing.assert_allclose(w.sum(), 1.0, atol=1e-12)
    np.testing.assert_allclose(
        w @ np.asarray(out.analyses.particles[-1]), out.analysis_mean[-1], atol=1e-12
    )


def test_gradient_through_stop_gradient_resampling():
    method = BootstrapPF(resampling="stop_gradient", ess_threshold=1.0)

    def evidence(scale, key):
        x0 = jax.random.normal(jax.random.fold_in(key, 99), (64, 2))
        return ff.run(method, _model(scale), x0, Y, TIMES, key=key).log_likelihood.sum()

    keys = jax.random.split(jax.random.key(7), 32)
    grads = np.asarray(jax.jit(jax.vmap(jax.grad(evidence), in_axes=(None, 0)))(1.0, keys))
    assert np.all(np.isfinite(grads))

    def kf_evidence(scale):
        prior = ff.GaussianState(jnp.zeros(2), jnp.eye(2))
        out = ff.run(ff.KalmanFilter(), _model(scale), prior, Y, TIMES, key=jax.random.key(0))
        return float(out.log_likelihood.sum())

    # The exact gradient by central differences of the Kalman evidence (same compiled program
    # for every scale; O(h^2) = 1e-10 error, far below the Monte Carlo tolerance).
    h = 1e-5
    exact = (kf_evidence(1.0 + h) - kf_evidence(1.0 - h)) / (2 * h)
    # The score-function estimator is consistent (biased at finite N through the log): its
    # mean over keys must have the Kalman gradient's sign and size within 5 SE + 25 %.
    se = grads.std(ddof=1) / np.sqrt(grads.size)
    assert abs(grads.mean() - exact) < K_SE * se + 0.25 * abs(exact), (grads.mean(), se, exact)


def test_bad_configuration_raises():
    x0 = jnp.zeros((N, 2))
    with pytest.raises(ValueError, match="ess_threshold"):
        BootstrapPF(ess_threshold=-1.0)
    with pytest.raises(ValueError, match="resampler"):
        BootstrapPF(resampler="nonsense")
    with pytest.raises(ValueError, match="resampling"):
        OptimalProposalPF(resampling="gumbel")
    with pytest.raises(ValueError, match="soft_alpha"):
        AuxiliaryPF(resampling="soft", soft_alpha=2.0)
    with pytest.raises(ValueError, match=r"\(N, N_x\)"):
        ff.run(BootstrapPF(), _model(), jnp.zeros(2), Y, TIMES, key=jax.random.key(0))
    nonlinear = fxp.Model(lambda x, t0, t1: x, lambda x: x**2, R, process_noise=Q)
    with pytest.raises(TypeError, match="LINEAR"):
        ff.run(OptimalProposalPF(), nonlinear, x0, Y, TIMES, key=jax.random.key(0))
    noiseless = fxp.Model(lambda x, t0, t1: x, jnp.eye(2), R)
    with pytest.raises(ValueError, match="qs > 0"):
        ff.run(EnKFProposalPF(), noiseless, x0, Y, TIMES, key=jax.random.key(0))
    for bad in (0, 2.5, True):
        # our ValueError, or jaxtyping's TypeCheckError (a TypeError) on the int annotation
        with pytest.raises((ValueError, TypeError), match="xn"):
            EnKFProposalPF(xn=bad)
    with pytest.raises(ValueError, match="wroot_max"):
        EnKFProposalPF(wroot_max=0.5)


def test_regularisation_jitters_duplicates_only():
    # A deterministic model, so the forecast particles are known exactly (A x_i).
    model = fxp.Model(_Linear(jnp.asarray(A)), jnp.eye(2), R)
    x0 = jax.random.normal(jax.random.key(0), (50, 2))
    state0 = BootstrapPF().init(jax.random.key(0), x0, model)
    obs = jnp.array([1.5, -0.5])

    @eqx.filter_jit
    def step(method):
        t0, t1 = jnp.asarray(0.0), jnp.asarray(1.0)
        return method.step(jax.random.key(1), state0, model, t0, t1, obs)[0].particles

    forecast = np.asarray(x0) @ A.T

    def matches(particles):
        # Which new particles equal some forecast particle (unjittered copies; 1e-12 allows
        # the matmul's round-off, the jitter is ~ 0.1).
        d = np.abs(np.asarray(particles)[:, None, :] - forecast[None]).max(-1)
        return (d < 1e-12).any(axis=1), np.unique(np.asarray(particles), axis=0).shape[0]

    # reg as an array: one compiled program for both values.
    plain, _ = matches(step(BootstrapPF(ess_threshold=1.0, reg=jnp.asarray(0.0))))
    assert plain.all()  # reg = 0: pure resampling, duplicates included
    kept, n_unique = matches(step(BootstrapPF(ess_threshold=1.0, reg=jnp.asarray(1.0))))
    # nuj: the single copies stay, every duplicated ancestor's copies move (all distinct).
    assert 0 < kept.sum() < kept.size and n_unique == kept.size
    moved, _ = matches(step(BootstrapPF(ess_threshold=1.0, reg=1.0, nuj=False)))
    assert not moved.any()  # nuj=False: every particle jittered


def test_enkf_proposal_both_branches_and_moments():
    kf = _kalman()
    boot, x4 = _runs("bootstrap"), _runs("enkf_x4")
    # The NER test (ESS of W_i g(y | mu_i) < 0.8 N) chose each branch in some cycles, so the
    # evidence test above covers the bootstrap step and the xn = 4 mixture step together.
    triggered = x4[3] < 0.8 * N
    assert triggered.any() and not triggered.all()

    def err(run):
        return np.sqrt(np.mean((run[1] - np.asarray(kf.analysis_mean)[None]) ** 2))

    def spread_err(run):
        return np.sqrt(np.mean((run[2] - np.asarray(kf.analysis_spread)[None]) ** 2))

    # 4 EnKF-centred children per particle with mixture weights: closer to the Kalman
    # moments than the bootstrap filter with the same N (the RMS over 64 keys x 16 entries
    # has a relative sd of ~ 5 %).
    assert err(x4) < err(boot)
    # and converging: 4x the particles halves the Monte Carlo error in theory; > 1.4x is a
    # safe margin (N = 64 -> 256).
    small = _runs("enkf_x4", n=N // 4, seed=3)
    assert err(x4) < err(small) / 1.4
    assert spread_err(x4) < spread_err(small) / 1.4


def test_enkf_proposal_degenerate_weights_freeze_the_run():
    # Every child's likelihood underflows (residual^2 = inf): status 1 at that cycle and a
    # frozen, finite state, never a NaN analysis passed on as a number.
    y = Y.at[3, 0].set(1e200)
    keys = jax.random.split(jax.random.key(1), KEYS)
    _, _, _, _, status, first, state_finite = _runner("enkf_x4", N)(keys, y)
    assert np.all(np.asarray(status) == ff.RunResult.NONFINITE)
    assert np.all(np.asarray(first) == 3)
    assert np.all(np.asarray(state_finite))


def test_enkf_proposal_duplicated_particles_singular_covariance():
    # No process noise, qs > 0 and 3 collinear points repeated: C_w (hence Q = (qs h)^2 C_w
    # and P) has rank 1, where a Cholesky factor fails. The kernel densities live on the
    # line through the particles; the run must stay finite and the children on that line.
    model = fxp.Model(_Linear(jnp.asarray(A)), jnp.eye(2), R)
    line = jnp.array([[0.0, 0.0], [1.0, 0.5], [-1.0, -0.5]])
    x0 = jnp.tile(line, (6, 1))
    out = ff.run(
        EnKFProposalPF(qs=0.5, xn=3, ess_threshold=1.0), model, x0, Y, TIMES,
        key=jax.random.key(5), throw=False, save="ensembles",
    )  # fmt: skip
    assert int(out.status) == 0
    assert bool(jnp.all(jnp.isfinite(out.analysis_mean)))
    # A x is linear, so every particle stays on the image line: the determinant of the
    # particles' 2x2 covariance is ~ 0 (1e-10 relative: round-off).
    c = np.cov(np.asarray(out.analyses.particles[-1]).T)
    assert abs(np.linalg.det(c)) < 1e-10 * np.trace(c) ** 2


def test_enkf_proposal_l96_bocquet2010_does_not_diverge():
    # Regression: the weighted-EnKF proposal (B = C_w + Q, per-particle weights) died after
    # ~30 cycles on DAPPER's bocquet2010 with qs = 1 (a failed Cholesky of duplicated
    # particles). 150 cycles, N = 50, xn = 4 (DAPPER: N = 100, xN = 100, rmse.a 0.32): no
    # failure, and an analysis error far below the climatological spread (~ 3.6).
    from filterax.zoo.presets import lorenz96_bocquet2010

    ssm = lorenz96_bocquet2010()
    twin = ssm.simulate(jax.random.key(0), 150)
    x0 = ssm.initial_ensemble(jax.random.key(1), 50)
    out = ff.run(
        EnKFProposalPF(qs=1.0, xn=4, ess_threshold=0.2), ssm, x0, twin.observations,
        twin.times, key=jax.random.key(2), throw=False,
    )  # fmt: skip
    assert int(out.status) == 0
    rmse = np.sqrt(np.mean((np.asarray(out.analysis_mean) - np.asarray(twin.truth)) ** 2, -1))
    assert rmse[50:].mean() < 1.0, rmse[50:].mean()


def test_enkf_proposal_gradient_is_finite():
    # grad-safe: the proposal's eigendecompositions are stop-gradients (repeated eigenvalues
    # here: H = I, isotropic Q and R), the weight-root loop carries only integers.
    method = EnKFProposalPF(xn=2, ess_threshold=0.8, resampling="stop_gradient")

    def evidence(scale, key):
        x0 = jax.random.normal(jax.random.fold_in(key, 99), (16, 2))
        return ff.run(method, _model(scale), x0, Y, TIMES, key=key).log_likelihood.sum()

    keys = jax.random.split(jax.random.key(7), 4)
    grads = np.asarray(jax.jit(jax.vmap(jax.grad(evidence), in_axes=(None, 0)))(1.0, keys))
    assert np.all(np.isfinite(grads)) and np.unique(grads).size == grads.size
