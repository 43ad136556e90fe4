# %% [markdown]
# # 9.A (1) Ensemble Kalman processes as optax transformations: `eki`
#
# `filterax.processes.optax` exposes the ensemble Kalman processes of Part 5 as optax
# gradient transformations, so an ensemble method drops into any optax training loop:
#
# - `tx.init(params) -> state`: the optimiser state holds the whole ensemble (or, for UKI,
#   the Gaussian $\mathcal N(m, C)$) started around `params`;
# - `tx.update(grads, state, params) -> (updates, state)`: the **gradient slot is unused**;
#   the transformation evaluates the forward model $G$ on every member (vmapped), takes one
#   process update and returns the increment $\bar\theta_{\text{new}} - \theta$;
# - `optax.apply_updates(params, updates)` then moves the parameters to the new ensemble
#   mean.
#
# This page covers 9.1 `eki`, [the next one](../part9_b_eks_uki/) 9.2 `eks` and 9.3 `uki`,
# on the same linear inverse problem, $y = G\theta^\dagger + \eta$ with $N_y = 8$ data,
# $N_p = 3$ parameters and $\Gamma = 0.1^2 I$, where every answer is known in closed form.
# Composition with `optax.chain` and the hybrid SGD + EKI pipeline are in
# [9.B–9.C](../part9_c_optax_composition/).

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import filterax.processes as fxproc
from filterax.processes import optax as fxo

jax.config.update("jax_enable_x64", True)

N_Y, N_P, N_E = 8, 3, 30  # docs size: a 3-parameter problem, 30 members
NOISE_STD = 0.1
rng = np.random.default_rng(0)
G = rng.normal(size=(N_Y, N_P))
theta_true = np.array([1.0, -0.5, 0.3])
gamma = NOISE_STD**2
y = G @ theta_true + NOISE_STD * rng.normal(size=N_Y)


def forward(params):  # G on ONE parameter pytree; the transformation vmaps it
    return G @ params["theta"]


params0 = {"theta": jnp.zeros(N_P)}  # the prior mean; init_std=1 below: prior N(0, I)


def kalman(m, P):
    """The exact Kalman (Gaussian) posterior for the linear model, prior N(m, P) (numpy)."""
    S = G @ P @ G.T + gamma * np.eye(N_Y)
    K = P @ G.T @ np.linalg.inv(S)
    return m + K @ (y - G @ m), P - K @ G @ P


# %% [markdown]
# ## 9.1 `eki`: ensemble Kalman inversion as a gradient transformation
#
# Each `update` is one EKI step (Iglesias, Law & Stuart 2013) with algorithm time step
# $\Delta t$,
#
# $$\theta_j \leftarrow \theta_j + C^{\theta g}\big(C^{gg} + \Gamma/\Delta t\big)^{-1}
# \big(y + \eta_j - G(\theta_j)\big),\qquad \eta_j \sim \mathcal N(0, \Gamma/\Delta t),$$
#
# and the returned update is $\bar\theta_{\text{new}} - \theta$, so after
# `optax.apply_updates` the parameters are the ensemble mean. The default scheduler,
# `DataMisfitController`, picks the $\Delta t$ and lands exactly on algorithm time
# $\sum \Delta t = 1$, then stops (further updates are zero).
#
# With `EKI(stochastic=False)` (the square-root form, no perturbations $\eta_j$) and a linear
# $G$, each step is an exact Kalman update of the likelihood tempered by $\Delta t$: at time 1
# the ensemble mean and covariance are **exactly** the Kalman posterior computed from the
# initial ensemble's sample mean and covariance. The page asserts that identity, and that the
# optax loop takes the same iterates as the standalone `EKI` process with the same key.

# %%
eki_process = fxproc.EKI(stochastic=False)
key = jax.random.key(0)
tx = fxo.eki(forward, y, gamma, n_ensemble=N_E, key=key, init_std=1.0, process=eki_process)
N_EKI_STEPS = 8  # the controller needs a handful of steps to reach time 1; then it stops


def eki_step(carry, _):
    params, opt_state = carry
    zero_grads = jax.tree.map(jnp.zeros_like, params)  # the gradient slot is unused
    updates, opt_state = tx.update(zero_grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    ps = opt_state.process_state
    return (params, opt_state), (params["theta"], ps.ensemble, ps.time, ps.dt, ps.converged)


def standalone_step(state, _):  # the same process driven by hand, for comparison
    state = eki_process.update(state, eki_process.particles(state) @ G.T)
    return state, state.ensemble


@jax.jit  # one compiled program for the optax loop and the hand-driven process
def eki_runs(params0, key):
    # the wrapper's key convention: init_key draws the initial ensemble, process_key the process
    init_key, process_key = jax.random.split(key)
    X0 = params0["theta"][None, :] + 1.0 * jax.random.normal(init_key, (N_E, N_P))
    opt_state = tx.init(params0)
    _, optax_path = jax.lax.scan(eki_step, (params0, opt_state), None, length=N_EKI_STEPS)
    state = eki_process.init(X0, y, gamma, key=process_key)
    _, hand_path = jax.lax.scan(standalone_step, state, None, length=N_EKI_STEPS)
    return X0, opt_state.process_state.ensemble, optax_path, hand_path


X0, X_init, (theta_path, ens_path, time_path, dt_path, conv_path), hand_path = eki_runs(
    params0, key
)


theta_path, ens_path, hand_path = (np.asarray(a) for a in (theta_path, ens_path, hand_path))
thetas = np.concatenate([np.zeros((1, N_P)), theta_path])
misfits = np.sum((thetas @ G.T - y) ** 2, axis=1) / gamma  # data misfit of the mean
for it in range(N_EKI_STEPS):
    print(
        f"step {it + 1}: dt = {float(dt_path[it]):.4f}  time = {float(time_path[it]):.4f}  "
        f"misfit = {misfits[it + 1]:8.2f}  converged = {bool(conv_path[it])}"
    )

# three-iteration smoke: the misfit falls by more than 10x in the first three steps
assert misfits[3] < 0.1 * misfits[0], misfits[:4]
assert bool(conv_path[-1])
assert abs(float(time_path[-1]) - 1.0) < 1e-12  # lands exactly on T = 1

# %% [markdown]
# The wrapper's initial ensemble is `params + init_std * jax.random.normal(init_key, ...)`
# with `init_key, process_key = jax.random.split(key)`; the standalone `EKI` process started
# from it with `process_key` takes the same iterates, and the final ensemble is the Kalman
# posterior of the initial sample. Tolerance 1e-10: round-off comparisons of O(1) numbers in
# float64 (observed ~1e-14).

# %%
X0 = np.asarray(X0)
assert np.array_equal(X0, X_init)  # the wrapper's initial ensemble, bit for bit
gap_standalone = np.max(np.abs(hand_path - ens_path))
m_kf, P_kf = kalman(X0.mean(0), np.cov(X0.T))
gap_mean = np.max(np.abs(theta_path[-1] - m_kf))
gap_cov = np.max(np.abs(np.cov(ens_path[-1].T) - P_kf))
print(f"optax vs standalone EKI, all steps: {gap_standalone:.1e}")
print(f"final mean - Kalman: {gap_mean:.1e}   covariance - Kalman: {gap_cov:.1e}")
assert gap_standalone < 1e-10
assert gap_mean < 1e-10 and gap_cov < 1e-10

m_post, P_post = kalman(np.zeros(N_P), np.eye(N_P))  # the exact posterior of the prior
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
times = np.concatenate([[0.0], np.asarray(time_path)])
paths = np.concatenate([X0[None], ens_path])
ax0.semilogy(range(N_EKI_STEPS + 1), misfits, "o-", color="C0")
ax0.axhline(N_Y, color="0.5", ls=":", label="$N_y$ (a fit at the noise level)")
ax0.set_xlabel("optax step")
ax0.set_ylabel(r"data misfit $\|\Gamma^{-1/2}(G\bar\theta - y)\|^2$")
ax0.legend(fontsize=8)
for i in range(N_P):
    ax1.plot(times, paths[:, :, i], color=f"C{i}", lw=0.5, alpha=0.4)
    ax1.plot(times, paths[:, :, i].mean(1), color=f"C{i}", lw=2, label=rf"$\theta_{i}$")
    ax1.axhline(float(m_post[i]), color=f"C{i}", ls="--", lw=1)
ax1.set_xlabel(r"algorithm time $\sum \Delta t$")
ax1.set_ylabel("ensemble members (thin), mean (thick)")
ax1.set_title("dashed: exact posterior mean")
ax1.legend(fontsize=8)
plt.show()
