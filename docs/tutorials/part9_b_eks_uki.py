# %% [markdown]
# # 9.A (2) Ensemble Kalman processes as optax transformations: `eks` and `uki`
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
# This page covers 9.2 `eks` and 9.3 `uki` ([the previous one](../part9_a_eki/): 9.1
# `eki`) on the linear inverse problem of 9.1, $y = G\theta^\dagger + \eta$ with $N_y = 8$
# data, $N_p = 3$ parameters, $\Gamma = 0.1^2 I$ and the prior $\mathcal N(0, I)$, whose
# posterior is known in closed form. Composition with `optax.chain` and the hybrid SGD + EKI
# pipeline are in [9.B–9.C](../part9_c_optax_composition/).

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


m_post, P_post = kalman(np.zeros(N_P), np.eye(N_P))  # the exact posterior


# %% [markdown]
# ## 9.2 `eks`: the ensemble Kalman sampler, and its key
#
# Each `update` is one step of the ensemble Kalman sampler (Garbuno-Iñigo et al. 2020), a
# discretisation of the interacting Langevin dynamics
#
# $$d\theta_j = -\Big(C^{\theta g}\Gamma^{-1}(G(\theta_j) - y) + C\,C_0^{-1}(\theta_j - m_0)
# \Big)dt + \frac{N_p + 1}{J}(\theta_j - \bar\theta)\,dt + \sqrt{2}\,C^{1/2} dW_j,$$
#
# whose invariant law is the posterior: the ensemble does not collapse, it samples. The
# prior $\mathcal N(m_0, C_0)$ defaults to the initial parameters with variance
# `init_std**2`, here $\mathcal N(0, I)$.
#
# **The key advances inside the state.** An optax `update` is a pure function, so the noise
# $dW_j$ of step $n$ cannot come from a key the user passes each call: the process key sits
# in the optimiser state, fixed, and step $n$ draws from `jax.random.fold_in(key, n)` with
# the iteration counter $n$ also in the state. Asserted below: the same state gives the
# same update (reproducible), the state's key never changes while the counter advances, and
# consecutive steps therefore draw from different keys.

# %%
tx_eks = fxo.eks(forward, y, gamma, n_ensemble=N_E, key=jax.random.key(1), init_std=1.0)
N_EKS_STEPS = 400  # docs size


@jax.jit
def eks_run(params, opt_state):
    def body(carry, _):
        params, opt_state = carry
        ps = opt_state.process_state
        step_key = jax.random.key_data(jax.random.fold_in(ps.key, ps.iteration))
        updates, opt_state = tx_eks.update(jax.tree.map(jnp.zeros_like, params), opt_state, params)
        params = optax.apply_updates(params, updates)
        record = (
            ps.iteration,
            jax.random.key_data(ps.key),
            step_key,
            opt_state.process_state.ensemble,
        )
        return (params, opt_state), record

    return jax.lax.scan(body, (params, opt_state), None, length=N_EKS_STEPS)


eks_state0 = tx_eks.init(params0)
(p_eks, s_eks), (iterations, state_keys, step_keys, eks_ensembles) = eks_run(params0, eks_state0)
(p_again, _), _ = eks_run(params0, eks_state0)  # the same state again: same compiled program
for n in range(3):
    print(
        f"step {n}: iteration = {int(iterations[n])}, state key = {state_keys[n]}, "
        f"step key = fold_in(key, {int(iterations[n])}) = {step_keys[n]}"
    )
iterations, state_keys, step_keys = (np.asarray(a) for a in (iterations, state_keys, step_keys))
assert np.array_equal(p_eks["theta"], p_again["theta"])  # same state -> bit-identical run
assert np.all(state_keys == state_keys[0])  # the state's key never changes ...
assert np.array_equal(iterations, np.arange(N_EKS_STEPS))  # ... the counter advances ...
assert len(np.unique(step_keys, axis=0)) == N_EKS_STEPS  # ... fresh noise each step

# %% [markdown]
# After the transient the members are (correlated) posterior samples, so their statistics
# pooled over the second half of the run estimate the posterior mean and covariance
# (the default `EKSStableScheduler` adapts $\Delta t$). Tolerances are statistical: the
# pooled samples are strongly autocorrelated and the explicit-in-time discretisation leaves
# an $O(\Delta t)$ bias in the spread, so the mean is checked to a fraction of the posterior
# standard deviation and the standard deviations to within 50 %.

# %%
samples = np.asarray(eks_ensembles[N_EKS_STEPS // 2 :]).reshape(-1, N_P)
m_eks, P_eks = samples.mean(0), np.cov(samples.T)
post_std = np.sqrt(np.diag(P_post))
print("algorithm time reached:", round(float(s_eks.process_state.time), 1))
print("posterior mean", np.round(m_post, 3), " EKS", np.round(m_eks, 3))
print("posterior std ", np.round(post_std, 3), " EKS", np.round(np.sqrt(np.diag(P_eks)), 3))
assert np.all(np.abs(m_eks - m_post) < 0.5 * post_std)
assert np.all(np.abs(np.sqrt(np.diag(P_eks)) / post_std - 1.0) < 0.5)


def ellipse(mean, cov, n=200):
    t = np.linspace(0, 2 * np.pi, n)
    return np.asarray(mean)[:, None] + 2 * np.linalg.cholesky(np.asarray(cov)) @ np.stack(
        [np.cos(t), np.sin(t)]
    )


fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), constrained_layout=True)
X0 = np.asarray(eks_state0.process_state.ensemble)
X_last = np.asarray(s_eks.process_state.ensemble)
for ax, zoom in zip(axes, (False, True), strict=True):
    if not zoom:
        ax.plot(*X0[:, :2].T, ".", color="0.6", label="initial ensemble (prior draws)")
    ax.plot(*samples[::5, :2].T, ".", color="C1", ms=2, alpha=0.3, label="EKS samples (pooled)")
    ax.plot(*X_last[:, :2].T, "o", color="C1", ms=4, label="EKS ensemble, last step")
    ax.plot(*ellipse(m_post[:2], P_post[:2, :2]), "k-", lw=2, label="exact posterior, 2 sigma")
    ax.plot(*ellipse(m_eks[:2], P_eks[:2, :2]), "--", color="C1", label="EKS samples, 2 sigma")
    ax.set_xlabel(r"$\theta_0$")
    ax.set_ylabel(r"$\theta_1$")
axes[0].legend(fontsize=8, loc="lower left")
axes[0].set_title("eks as an optax transformation: prior to posterior")
axes[1].set_title("zoom on the posterior")
plt.show()

# %% [markdown]
# ## 9.3 `uki`: unscented Kalman inversion with a parametric carry
#
# UKI carries a Gaussian, not an ensemble: the optimiser state holds the mean $m_n$ and the
# covariance $C_n$ (in `process_state.extra`), and each `update` evaluates $G$ at the
# $2N_p + 1$ sigma points of the predicted Gaussian and updates **both**
# (Huang, Schneider & Stuart 2022):
#
# $$m_{n+1} = \hat m + C^{\theta g}(C^{gg} + \Sigma_\nu/\Delta t)^{-1}(y - \hat g),\qquad
# C_{n+1} = \hat C - C^{\theta g}(C^{gg} + \Sigma_\nu/\Delta t)^{-1}C^{g\theta}.$$
#
# With the prior imposed (`UKI(..., impose_prior=True)`) the precision obeys
# $C_{n+1}^{-1} = C_n^{-1}/(1 + \Delta t) + \tfrac{\Delta t}{2}(G^\top\Gamma^{-1}G +
# C_0^{-1})$, whose fixed point at $\Delta t = 1$ is exactly the posterior; the error halves
# every step. The parameters follow $m_n$ through `optax.apply_updates`.

# %%
uki_process = fxproc.UKI(np.zeros(N_P), np.eye(N_P), impose_prior=True)
tx_uki = fxo.uki(forward, y, gamma, init_std=1.0, process=uki_process)
N_UKI_STEPS = 40  # docs size: 40 halvings reach round-off


@jax.jit
def uki_run(params, opt_state):
    def body(carry, _):
        params, opt_state = carry
        updates, opt_state = tx_uki.update(jax.tree.map(jnp.zeros_like, params), opt_state, params)
        params = optax.apply_updates(params, updates)
        extra = opt_state.process_state.extra
        return (params, opt_state), (params["theta"], extra.mean, extra.cov)

    return jax.lax.scan(body, (params, opt_state), None, length=N_UKI_STEPS)


uki_state0 = tx_uki.init(params0)
print("sigma points per step:", uki_state0.process_state.ensemble.shape[0], "= 2 N_p + 1")
_, (theta_n, mean_n, cov_n) = uki_run(params0, uki_state0)
assert (
    np.max(np.abs(np.asarray(theta_n) - np.asarray(mean_n))) < 1e-12
)  # the parameters ARE the carried mean
err_mean = np.max(np.abs(np.asarray(mean_n) - m_post), axis=1)
err_cov = np.max(np.abs(np.asarray(cov_n) - P_post), axis=(1, 2))
print(f"after {N_UKI_STEPS} steps: |m - m_post| = {err_mean[-1]:.1e}, ", end="")
print(f"|C - C_post| = {err_cov[-1]:.1e}")
# the exact posterior to round-off (geometric rate 1/2: 2^-40 ~ 1e-12 of the initial error)
assert err_mean[-1] < 1e-9 and err_cov[-1] < 1e-9
# and the rate: each step roughly halves both errors (checked over steps 5..25, away from
# the transient and from round-off)
rate_mean = (err_mean[25] / err_mean[5]) ** (1 / 20)
rate_cov = (err_cov[25] / err_cov[5]) ** (1 / 20)
print(f"observed contraction per step: mean {rate_mean:.3f}, covariance {rate_cov:.3f}")
assert abs(rate_mean - 0.5) < 0.05 and abs(rate_cov - 0.5) < 0.05

fig, ax = plt.subplots(figsize=(6.5, 3.8), constrained_layout=True)
steps = np.arange(1, N_UKI_STEPS + 1)
ax.semilogy(steps, err_mean, "o-", ms=3, color="C2", label=r"$\max|m_n - m_{post}|$")
ax.semilogy(steps, err_cov, "s-", ms=3, color="C4", label=r"$\max|C_n - C_{post}|$")
ax.semilogy(steps, err_mean[0] * 0.5 ** (steps - 1), "k:", label="rate 1/2")
ax.set_xlabel("optax step")
ax.set_ylabel("error vs the exact posterior")
ax.set_title("uki: mean and covariance both converge")
ax.legend(fontsize=8)
plt.show()
