# %% [markdown]
# # 7.D The log predictive density as a training loss
#
# Every cycle of a filter predicts the next observation before seeing it. The Gaussian
# predictive density of the forecast ensemble,
#
# $$\log p(y_t \mid y_{1:t-1}) \approx \log \mathcal N\big(y_t;\ \overline{H(X^f_t)},\
# S_t\big) = -\tfrac12\big[N_y \log 2\pi + \log|S_t| + v_t^\top S_t^{-1} v_t\big],$$
#
# with $v_t$ and $S_t$ the innovation and its covariance of 7.3, scores the whole filter —
# model, observation operator and error statistics together — with no truth needed. Summed
# over the cycles, $-\sum_t \log p(y_t \mid y_{1:t-1})$ is the negative log-evidence of the
# observations, the training loss of differentiable DA (Part 8). This page shows where it
# lives in the API, sums it over windows, and checks that its gradient points the right way.

# %%
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import presets

jax.config.update("jax_enable_x64", True)

N_CYCLES = 20  # docs size: one training window: 5 time units of Lorenz-63 (see the note on length)
N_E = 10
RHO_TRUE = 28.0
RHO_GRID = jnp.linspace(24.0, 32.0, 9)

ssm = presets.lorenz63_sakov2012()
twin = ssm.simulate(jax.random.key(0), N_CYCLES)
ens0 = ssm.initial_ensemble(jax.random.key(1), N_E)


def negative_log_evidence(rho):
    """-sum_t log p(y_t | y_<t) of an ETKF run whose model uses `rho`."""
    model = eqx.tree_at(lambda m: m.dynamics.rho, ssm, rho)
    out = ff.run(
        ff.ETKF(),  # deterministic (no rotation): the loss is a smooth function of rho
        model,
        ens0,
        twin.observations,
        twin.times,
        key=jax.random.key(2),
        save="forecast_and_analysis",
    )
    return -jnp.sum(out.log_likelihood), out


# the loss and its gradient on the whole grid: one compiled program
loss_and_grad = jax.jit(jax.vmap(jax.value_and_grad(negative_log_evidence, has_aux=True)))
(loss, outs), grad = loss_and_grad(RHO_GRID)
i_true = int(jnp.argmin(jnp.abs(RHO_GRID - RHO_TRUE)))

# %% [markdown]
# ## 7.9 Log predictive density as the training loss
#
# **Where it lives.** Each analysis kernel returns it (`Analysis.log_likelihood`), `run`
# stacks it per cycle (`RunResult.log_likelihood`), and `fxp.innovation_statistics(Y, y, R)`
# computes it, with its parts, from any forecast ensemble in observation space
# (`InnovationStatistics.log_likelihood`, `.mahalanobis`, `.logdet`). The first check: the
# run's per-cycle values are exactly those of `innovation_statistics` on the saved forecasts.

# %%
run_true = jax.tree_util.tree_map(lambda a: a[i_true], outs)
recomputed = jax.jit(jax.vmap(fxp.innovation_statistics, in_axes=(0, 0, None)))(
    run_true.forecasts, twin.observations, ssm.obs_noise
)  # H = I: the forecast ensemble is already in observation space
assert np.allclose(recomputed.log_likelihood, run_true.log_likelihood, rtol=1e-10, atol=1e-10)
print("per-cycle log p(y_t | y_<t) from run == innovation_statistics(...).log_likelihood")

# %% [markdown]
# **A running sum over windows.** The loss is additive over cycles, so it can be accumulated
# window by window (what a training loop over a long record does, one window per step). The
# cumulative sums below are for the true $\rho = 28$ and two wrong values: the wrong models
# fall behind steadily, window after window, not in one unlucky cycle.

# %%
WINDOW = 5
windows = np.asarray(outs.log_likelihood).reshape(len(RHO_GRID), -1, WINDOW).sum(axis=2)
print("loss per window of", WINDOW, "cycles:")
for j in (0, i_true, len(RHO_GRID) - 1):
    print(f"  rho {float(RHO_GRID[j]):4.0f}:", np.round(-windows[j], 1))
# every window, not only the total, prefers the true model
assert np.all(-windows[0] > -windows[i_true]) and np.all(-windows[-1] > -windows[i_true])

# %% [markdown]
# **Gradient-sign sanity check.** Before training anything through a filter, check that
# `jax.grad` of the loss points downhill: negative to the left of the minimum, positive to its
# right, and consistent with finite differences of the loss profile.
#
# **Window length matters.** Lorenz-63 is chaotic (leading Lyapunov exponent about 0.9), and
# although each analysis pulls the ensemble back towards the observations, the derivative of
# a long run with respect to a model parameter still grows with the run's length. When this
# page was written, the same check over 100 cycles (25 time units) returned derivatives of
# order $10^{10}$ with signs that no longer matched the loss profile. Training therefore
# sums the loss over short windows (here 20 cycles), as Part 8 does.

# %%
loss = np.asarray(loss)
grad = np.asarray(grad)
fd = np.gradient(loss, np.asarray(RHO_GRID))
for r, value, g, f in zip(np.asarray(RHO_GRID), loss, grad, fd, strict=True):
    print(f"rho {r:5.1f}: loss {value:9.2f}   d loss/d rho {g:9.2f}   finite difference {f:9.2f}")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
for j, c in ((0, "C3"), (i_true, "C0"), (len(RHO_GRID) - 1, "C2")):
    axes[0].plot(
        np.arange(1, windows.shape[1] + 1) * WINDOW,
        np.cumsum(-windows[j]),
        "o-",
        ms=3,
        color=c,
        label=rf"$\rho$ = {float(RHO_GRID[j]):.0f}",
    )
axes[0].set_xlabel("cycles assimilated")
axes[0].set_ylabel(r"running $-\sum_t \log p(y_t \mid y_{<t})$")
axes[0].set_title(f"loss accumulated over windows of {WINDOW} cycles")
axes[0].legend(fontsize=8)
axes[1].plot(RHO_GRID, loss, "o-", color="C0", label="loss")
for r, value, g in zip(np.asarray(RHO_GRID), loss, grad, strict=True):
    axes[1].plot([r - 0.4, r + 0.4], [value - 0.4 * g, value + 0.4 * g], color="C1", lw=2)
axes[1].plot([], [], color="C1", lw=2, label="jax.grad tangents")
axes[1].axvline(RHO_TRUE, color="k", ls=":", label=r"true $\rho$")
axes[1].set_xlabel(r"$\rho$")
axes[1].set_ylabel(r"$-\sum_t \log p(y_t \mid y_{<t})$")
axes[1].set_title("loss profile and its gradient")
axes[1].legend(fontsize=8)
plt.show()

# %%
i_min = int(np.argmin(loss))
assert abs(float(RHO_GRID[i_min]) - RHO_TRUE) <= 1.0  # the minimum is at the true rho
assert np.all(np.isfinite(grad))
assert np.all(grad[: i_min - 1] < 0) and np.all(grad[i_min + 2 :] > 0)  # points downhill
# away from the minimum the analytic gradient and the (coarse, step 1) finite difference of
# the profile agree in sign
far = np.abs(np.asarray(RHO_GRID) - RHO_TRUE) >= 2
assert np.all(np.sign(grad[far]) == np.sign(fd[far]))
