"""ConditionalFlowFilter: untrained == the perturbed-observation EnKF (numpy, same draws),
through the one driver (jit, vmap over keys), the non-finite fallback, and rmse parity with
the stochastic EnKF on a linear-Gaussian problem."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.learn import (
    AbstractConditionalBijection,
    ConditionalFlow,
    ConditionalFlowFilter,
    conditional_flow,
)

N_X, N_E = 2, 24
A = np.array([[0.9, 0.2], [-0.2, 0.9]])
R_DIAG = np.array([0.5, 0.8])


def _linear(x, t0, t1):
    del t0, t1
    return jnp.asarray(A, x.dtype) @ x


def _model(process_noise=None):
    return fxp.Model(
        dynamics=_linear,
        obs_op=fxp.IdentityObs(),
        obs_noise=jnp.asarray(R_DIAG),
        process_noise=process_noise,
    )


def _numpy_enkf(forecast, eps, obs):
    """x_i + K(y* - h(x_i) - eps_i), K = C^{xh}(C^{hh} + R)^{-1} over the observed entries."""
    forecast, eps, obs = (np.asarray(a, dtype=np.float64) for a in (forecast, eps, obs))
    obs_idx = np.flatnonzero(np.isfinite(obs))
    hx = forecast[:, obs_idx]
    c = np.cov(np.concatenate([forecast, hx], axis=1).T)
    n = forecast.shape[1]
    gain = c[:n, n:] @ np.linalg.inv(c[n:, n:] + np.diag(R_DIAG[obs_idx]))
    return forecast + (obs[obs_idx][None, :] - hx - eps[:, obs_idx]) @ gain.T


@pytest.mark.parametrize(("copies", "obs"), [(1, [0.7, -1.1]), (3, [np.nan, -1.1])])
def test_untrained_flow_filter_is_the_perturbed_observation_enkf(getkey, copies, obs):
    flow = conditional_flow(getkey(), N_X, N_X, n_layers=2, width=8, normaliser=True)
    method = ConditionalFlowFilter(flow, optax.adam(1e-2), n_steps=0, n_noise_copies=copies)
    ens0 = jax.random.normal(getkey(), (N_E, N_X))
    model = _model()
    state = method.init(getkey(), ens0, model)
    key = getkey()
    obs = jnp.asarray(obs)
    new_state, info = eqx.filter_jit(method.step)(
        key, state, model, jnp.array(0.0), jnp.array(1.0), obs
    )
    # the draws, as the class docstring says they are made
    k_pert = jax.random.split(key, 3)[1]
    eps = fxp.perturbed_observations(
        k_pert, jnp.zeros(N_X), jnp.asarray(R_DIAG), N_E * copies, center=True
    )[:N_E]
    forecast = np.asarray(ens0) @ A.T
    ref = _numpy_enkf(forecast, eps, obs)
    # round-off: the normaliser's C cancels (C C^{-1}); observed ~1e-15
    np.testing.assert_allclose(new_state.particles, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(info.forecast, forecast, atol=1e-14)
    assert int(info.diagnostics.n_fallback) == 0


class _PoisonAbove(AbstractConditionalBijection):
    """Identity, except that forward() returns NaN when z_0 > threshold (to test the fallback)."""

    threshold: float

    def forward(self, z, y):
        return jnp.where(z[0] > self.threshold, jnp.nan, z), jnp.zeros((), z.dtype)

    def inverse(self, x, y):
        return x, jnp.zeros((), x.dtype)

    def context(self, y):
        return y


def test_non_finite_members_fall_back_to_the_enkf(getkey):
    base = conditional_flow(getkey(), N_X, N_X, n_layers=1, width=8, normaliser=True)
    flow = ConditionalFlow([*base.layers, _PoisonAbove(0.5)])
    method = ConditionalFlowFilter(flow, optax.adam(1e-2), n_steps=0)
    ens0 = jax.random.normal(getkey(), (N_E, N_X))
    model, key, obs = _model(), getkey(), jnp.array([0.7, -1.1])
    state = method.init(getkey(), ens0, model)
    new_state, info = eqx.filter_jit(method.step)(
        key, state, model, jnp.array(0.0), jnp.array(1.0), obs
    )
    eps = fxp.perturbed_observations(
        jax.random.split(key, 3)[1], jnp.zeros(N_X), jnp.asarray(R_DIAG), N_E, center=True
    )
    ref = _numpy_enkf(np.asarray(ens0) @ A.T, eps, obs)
    # the latent of member i under the EnKF layer: C^{-1}(x - mu_x - K(y - mu_y))
    z = jax.vmap(lambda x, y: method.flow_of(new_state).inverse(x, y)[0])(
        info.forecast, eps + info.forecast
    )
    expected = int(jnp.sum(z[:, 0] > 0.5))
    assert 0 < expected < N_E
    assert int(info.diagnostics.n_fallback) == expected
    assert bool(info.finite)
    np.testing.assert_allclose(new_state.particles, ref, rtol=0, atol=1e-12)


def _twin(key, n_cycles):
    """A linear-Gaussian twin: truth with process noise Q = 0.05 I, every component observed."""
    q = 0.05
    k_truth, k_obs = jax.random.split(key)
    noise = jax.random.normal(k_truth, (n_cycles, N_X)) * np.sqrt(q)

    def body(x, w):
        x = jnp.asarray(A) @ x + w
        return x, x

    _, truth = jax.lax.scan(body, jnp.array([1.0, -1.0]), noise)
    obs = truth + jax.random.normal(k_obs, truth.shape) * jnp.sqrt(jnp.asarray(R_DIAG))[None, :]
    return truth, obs, jnp.arange(1.0, n_cycles + 1.0), q


def test_runs_through_the_driver_and_matches_the_enkf_on_a_linear_problem(getkey):
    n_cycles, n_seeds = 20, 3
    truth, obs, times, q = _twin(jax.random.key(3), n_cycles)
    model = _model(process_noise=q)
    ens0 = jnp.array([[1.0, -1.0]]) + jax.random.normal(jax.random.key(4), (N_E, N_X))
    flow = conditional_flow(
        jax.random.key(5), N_X, N_X, n_layers=2, kind="affine", width=8, normaliser=True
    )
    flow_method = ConditionalFlowFilter(flow, optax.adam(3e-3), n_steps=10, n_noise_copies=2)
    enkf = ff.EnsembleFilter(ff.StochasticEnKF())

    def rmse(method, key):
        out = ff.run(method, model, ens0, obs, times, key=key)
        err = jnp.sqrt(jnp.mean((out.analysis_mean - truth) ** 2, axis=1))
        return jnp.mean(err), out.status, out.diagnostics

    keys = jax.random.split(jax.random.key(6), n_seeds)
    flow_rmse, status, diag = jax.vmap(lambda k: rmse(flow_method, k))(keys)
    enkf_rmse, _, _ = jax.vmap(lambda k: rmse(enkf, k))(keys)
    assert bool(jnp.all(status == 0))
    assert diag.final_loss.shape == (n_seeds, n_cycles)
    assert bool(jnp.all(diag.n_fallback == 0))
    # the fit lowers the pairs' NLL within a cycle (averaged over cycles and seeds)
    assert float(jnp.mean(diag.final_loss - diag.initial_loss)) < 0.0
    # Parity on a Gaussian problem: N_E = 24 gives a Monte Carlo spread of the time-mean rmse
    # of ~5% per seed; a flow fitted to 48 pairs may add a little noise: 15% on the mean of 3.
    assert float(jnp.mean(flow_rmse)) < 1.15 * float(jnp.mean(enkf_rmse)), (flow_rmse, enkf_rmse)


def test_bad_configuration_fails_early(getkey):
    plain = conditional_flow(getkey(), N_X, N_X, n_layers=1, width=8)
    with pytest.raises(TypeError, match="EnKFNormaliser"):
        ConditionalFlowFilter(plain)
    flow = conditional_flow(getkey(), N_X, N_X, n_layers=1, width=8, normaliser=True)
    with pytest.raises(ValueError, match="n_noise_copies"):
        ConditionalFlowFilter(flow, n_noise_copies=0)
    with pytest.raises(TypeError, match="optax"):
        ConditionalFlowFilter(flow, optimiser="adam")
    with pytest.raises(ValueError, match="N_x=2"):
        ConditionalFlowFilter(flow).init(getkey(), jnp.zeros((N_E, 3)), _model())
