"""Why training goes through truncated windows: exact gradients of long chaotic runs explode.

Issue 12 ("Differentiable assimilation"): through a long Lorenz-96 run the exact derivative of
the innovation NLL with respect to the model forcing is dominated by the exponential growth of
perturbations (its sign depends on the realisation), while truncated windows point the right
way for every realisation. The tutorial "8.A-8.B, 8.D Gradients through a filter" shows the
same at docs size with a figure.
"""

import jax
import jax.numpy as jnp
import numpy as np

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import Lorenz96, StateSpaceModel

N_X, N_E, DT, T, N_TWINS = 20, 10, 0.05, 240, 3


def twin(key):
    k_spin, k_sim, k_ens = jax.random.split(key, 3)
    dynamics = Lorenz96(n=N_X, forcing=8.0, dt=DT)
    x0 = dynamics(8.0 + jax.random.normal(k_spin, (N_X,)), 0.0, 20.0)  # onto the attractor
    ssm = StateSpaceModel(dynamics, fxp.IdentityObs(), 1.0, dt_obs=DT, x0_mean=x0, x0_cov=1e-6)
    xp = ssm.simulate(k_sim, T)
    return xp.observations, xp.times, xp.truth[0][None] + jax.random.normal(k_ens, (N_E, N_X))


def test_exact_gradients_of_long_chaotic_runs_explode_while_windows_descend():
    twins = [twin(jax.random.key(20 + i)) for i in range(N_TWINS)]
    obs = jnp.stack([t[0] for t in twins])
    ens = jnp.stack([t[2] for t in twins])
    times = twins[0][1]

    def grads(adjoint):
        def nll(forcing, y, e):
            model = fxp.Model(Lorenz96(n=N_X, forcing=forcing, dt=DT), fxp.IdentityObs(), 1.0)
            method = ff.EnsembleFilter(ff.ETKF(), inflator=fxp.MultiplicativeInflator(1.05))
            out = ff.run(method, model, e, y, times, key=jax.random.key(0), adjoint=adjoint,
                         throw=False)  # fmt: skip
            return -jnp.sum(out.log_likelihood)

        g = jax.jit(jax.vmap(jax.grad(nll), in_axes=(None, 0, 0)))(jnp.asarray(7.0), obs, ens)
        return np.asarray(g)

    exact = grads(ff.FullAdjoint())
    windowed = grads(ff.TruncatedAdjoint(window=10))
    # The model's forcing (7) is below the truth's (8): descent means dL/dF < 0. Every
    # windowed gradient says so ...
    assert np.all(windowed < 0), windowed
    # ... and agree with each other (within 2x), while the exact gradients are finite but
    # useless: over 12 time units the leading Lyapunov exponent (~1.7 per unit for F = 8)
    # amplifies the sensitivity so much that they are orders of magnitude larger and vary
    # wildly from one realisation to the next, in size and sign. They even change with XLA's
    # optimisation level (round-off, amplified): measured +1.4e5, +3.1e3, +6.8e4 with the
    # optimisations on, -3.2e3, -3.5e5, +8.3e5 with JAX_DISABLE_MOST_OPTIMIZATIONS=1, against
    # windowed values of -400 to -700 both times. The thresholds below hold for both.
    assert np.all(np.isfinite(exact))
    mag_w, mag_e = np.abs(windowed), np.abs(exact)
    assert mag_w.max() < 2 * mag_w.min(), windowed
    assert mag_e.max() > 10 * mag_e.min(), exact
    assert mag_e.max() > 50 * mag_w.max(), (exact, windowed)
