# %% [markdown]
# # 5.A Ensemble Kalman inversion (1): EKI and TEKI
#
# An ensemble Kalman *process* solves a static inverse problem: find parameters $\theta$
# with $y = G(\theta) + \eta$, $\eta \sim \mathcal N(0, \Gamma)$, using only evaluations of
# $G$ at the ensemble members (derivative-free). Every process in `filterax.processes` has the
# same two calls, `state = process.init(ensemble, y, Gamma, key=key)` and
# `state = process.update(state, G(process.particles(state)))`; the EKI update with
# algorithm-time step $\Delta t_n$ is
#
# $$\theta^j_{n+1} = \theta^j_n + \Delta t_n\, C^{\theta G}_n
# \big(C^{GG}_n + \Delta t_n^{-1}\Gamma\big)^{-1}\big(y - G(\theta^j_n)\big).$$
#
# The step $\Delta t_n$ tempers the noise: $\Delta t_n^{-1}\Gamma$ is the likelihood raised to
# the power $\Delta t_n$. Steps that sum to an algorithm time of 1 give (for a linear $G$ and a
# large ensemble) the Bayesian posterior of the initial ensemble's Gaussian; iterated further,
# the spread collapses to 0 and the mean goes to the data-misfit minimiser.
#
# The Gauss-Newton, transform and sparse variants (5.3–5.5) are on the next page,
# [5.A (2)](../part5_a_gnki_etki_sparse/). All sections use the same small linear problem,
# so every claim can be checked against the closed-form Kalman answer: $N_p = 4$
# parameters, $N_y = 8$ data, $\Gamma = 0.5\,I$, prior $\mathcal N(0, I)$. A whole run
# is one `lax.scan` of `update`, compiled once per process and reused (the forward matrix,
# the data and the step are traced arguments).

# %%
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.processes as fxproc

jax.config.update("jax_enable_x64", True)

N_P, N_Y, N_E = 4, 8, 100  # docs size
GAMMA = 0.5
rng = np.random.default_rng(0)
G = rng.normal(size=(N_Y, N_P))
theta_true = np.array([1.0, -0.5, 0.8, 0.3])
y = G @ theta_true + np.sqrt(GAMMA) * rng.normal(size=N_Y)
X0 = rng.normal(size=(N_E, N_P))  # the initial ensemble: draws from the prior N(0, I)


def kalman(m, C, G, y, gamma_diag, T=1.0):
    """Mean and covariance of N(m, C) updated with the likelihood N(y; G theta, Gamma / T)."""
    S = G @ C @ G.T + np.diag(gamma_diag) / T
    K = C @ G.T @ np.linalg.inv(S)
    return m + K @ (y - G @ m), C - K @ G @ C


@eqx.filter_jit
def run(process, ensemble0, G, y, gamma_diag, key, n_iter):
    """`n_iter` updates of `process` on theta -> G theta; the ensemble after each update."""
    state = process.init(ensemble0, y, gamma_diag, key=key)

    def body(state, _):
        state = process.update(state, process.particles(state) @ G.T)
        return state, (process.particles(state), state.time)

    state, (ensembles, times) = jax.lax.scan(body, state, None, length=n_iter)
    return jnp.concatenate([ensemble0[None], ensembles]), times, state.status


def fixed(dt):
    # a traced step: one compiled program serves every dt
    return fxproc.FixedScheduler(jnp.asarray(dt))


gamma_diag = jnp.full(N_Y, GAMMA)
key = jax.random.key(1)
m_hat, C_hat = X0.mean(0), np.cov(X0, rowvar=False)  # the initial ensemble's statistics
m_post, C_post = kalman(np.zeros(N_P), np.eye(N_P), G, y, np.full(N_Y, GAMMA))
theta_ls = np.linalg.lstsq(G, y, rcond=None)[0]  # the data-misfit minimiser (Gamma = c I)
print("posterior mean", m_post.round(3), "| least squares", theta_ls.round(3))

# %% [markdown]
# ## 5.1 EKI (Iglesias, Law & Stuart 2013)
#
# `EKI()` is the stochastic (perturbed-observation) form: each member sees $y + \eta_j$,
# $\eta_j \sim \mathcal N(0, \Delta t^{-1}\Gamma)$. `EKI(stochastic=False)` is the
# deterministic square-root form: the mean moves with the same gain and the anomalies are
# transformed so that the new sample covariance is the Kalman one **exactly**. For a linear
# $G$ one deterministic update with step $\Delta t$ is the Kalman update of the sample mean
# $\hat m$ and (Bessel) covariance $\hat C$ with noise $\Gamma/\Delta t$, and $n$ updates
# compose into one with $\Gamma/T$, $T = \sum_n \Delta t_n$:
#
# $$\bar\theta_T = \hat m + \hat C G^\top (G\hat C G^\top + T^{-1}\Gamma)^{-1}(y - G\hat m),
# \qquad C_T = \big(\hat C^{-1} + T\,G^\top\Gamma^{-1}G\big)^{-1}.$$
#
# So at $T = 1$ the ensemble is the posterior of $\mathcal N(\hat m, \hat C)$, and as
# $T \to \infty$ the spread collapses like $T^{-1/2}$ and the mean converges to the
# least-squares solution. The run below takes 80 fixed steps of $\Delta t = 0.25$
# ($T = 1$ after 4 of them, $T = 20$ at the end). The stochastic form follows the same
# trend in expectation; its mean stalls at a sampling-noise floor set by the perturbations
# (right panel), while its spread keeps collapsing.

# %%
DT, N_ITER = 0.25, 80
ens_det, times, status = run(
    fxproc.EKI(stochastic=False, scheduler=fixed(DT)), X0, G, y, gamma_diag, key, N_ITER
)
ens_sto, _, status_sto = run(fxproc.EKI(scheduler=fixed(DT)), X0, G, y, gamma_diag, key, N_ITER)
assert int(status) == int(status_sto) == fxproc.ProcessState.OK
T = np.concatenate([[0.0], np.asarray(times)])
ens_det, ens_sto = np.asarray(ens_det), np.asarray(ens_sto)

# the deterministic EKI is the closed form at every algorithm time (float64 round-off: ~1e-13)
worst = 0.0
for n in range(1, N_ITER + 1):
    m_T, C_T = kalman(m_hat, C_hat, G, y, np.full(N_Y, GAMMA), T[n])
    worst = max(
        worst,
        np.abs(ens_det[n].mean(0) - m_T).max(),
        np.abs(np.cov(ens_det[n], rowvar=False) - C_T).max(),
    )
print(f"deterministic EKI vs the closed form, worst over 80 steps: {worst:.1e}")
assert worst < 1e-9
assert T[4] == 1.0  # 4 x 0.25 is exact in binary

# the stochastic EKI at T = 1 samples the posterior: its mean is off by sampling noise only,
# of order (posterior std) / sqrt(N_e); 4 such standard errors is the tolerance
z = np.abs(ens_sto[4].mean(0) - m_post) / np.sqrt(np.diag(C_post) / N_E)
print(f"stochastic EKI at T = 1: |mean - posterior mean| in standard errors: {z.round(2)}")
assert z.max() < 4.0


def spread(ens):
    return np.sqrt(np.trace(np.cov(ens, rowvar=False)))


spread_det = np.array([spread(e) for e in ens_det])
spread_sto = np.array([spread(e) for e in ens_sto])
dist_det = np.linalg.norm(ens_det.mean(1) - theta_ls, axis=1)
dist_sto = np.linalg.norm(ens_sto.mean(1) - theta_ls, axis=1)
# collapse: from T = 1 to T = 20 the spread shrinks like T^(-1/2), i.e. by ~sqrt(20) = 4.5
print(f"spread T=1 -> T=20: {spread_det[4]:.3f} -> {spread_det[-1]:.3f} (deterministic)")
assert 3.5 < spread_det[4] / spread_det[-1] < 4.6
assert spread_sto[-1] < spread_sto[4] / 3  # the stochastic one collapses too
assert dist_det[-1] < dist_det[4] / 10 and dist_sto[-1] < dist_sto[4] / 3  # -> least squares

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
axes[0].loglog(T[1:], spread_sto[1:], "-", color="C0", label="EKI (stochastic)")
axes[0].loglog(T[1:], spread_det[1:], "--", color="C1", label="EKI (deterministic)")
axes[0].loglog(T[1:], spread_det[4] * T[1:] ** -0.5, ":", color="0.4", label=r"$T^{-1/2}$")
axes[0].axvline(1.0, color="0.7", lw=0.8)
axes[0].set_xlabel("algorithm time $T$")
axes[0].set_ylabel(r"spread $\sqrt{\mathrm{tr}\,C_T}$")
axes[0].legend()
axes[1].loglog(T[1:], dist_sto[1:], "-", color="C0", label="EKI (stochastic)")
axes[1].loglog(T[1:], dist_det[1:], "--", color="C1", label="EKI (deterministic)")
axes[1].axvline(1.0, color="0.7", lw=0.8)
axes[1].set_xlabel("algorithm time $T$")
axes[1].set_ylabel(r"$\|\bar\theta_T - \theta_{\mathrm{LS}}\|$")
axes[1].legend()
fig.suptitle("EKI: posterior at T = 1, collapse onto the least-squares solution as T grows")
plt.show()

# %% [markdown]
# ## 5.2 TEKI: Tikhonov-regularised EKI (Chada, Stuart & Tong 2020)
#
# EKI's limit is the least-squares solution *within the span of the initial ensemble*: a
# parameter the data do not see keeps whatever value the initial ensemble gave it. TEKI runs
# EKI on the problem augmented with an identity block that pulls toward the prior
# $\mathcal N(m_0, C_0)$,
#
# $$\tilde G(\theta) = \begin{bmatrix} G(\theta) \\ \theta \end{bmatrix},\qquad
# \tilde y = \begin{bmatrix} y \\ m_0 \end{bmatrix},\qquad
# \tilde\Gamma = \begin{bmatrix} \Gamma & 0 \\ 0 & C_0 \end{bmatrix},$$
#
# whose least-squares solution is the MAP estimate
# $\arg\min_\theta \tfrac12\|y - G(\theta)\|^2_{\Gamma} + \tfrac12\|\theta - m_0\|^2_{C_0}$.
# The demo makes $\theta_4$ unidentifiable (its column of $G$ is zero) and starts the
# ensemble far from the prior in that direction ($\theta_4 \sim \mathcal N(3, 1)$). EKI
# leaves both the mean and the spread of $\theta_4$ where the initial ensemble put them;
# TEKI pulls the mean to $m_0$ and contracts the spread.

# %%
G_u = G.copy()
G_u[:, 3] = 0.0  # theta_4 does not enter the data
y_u = G_u @ theta_true + np.sqrt(GAMMA) * rng.normal(size=N_Y)
X0_u = X0 + np.array([0.0, 0.0, 0.0, 3.0])
m0, C0 = np.zeros(N_P), np.eye(N_P)
teki = fxproc.TEKI(jnp.asarray(m0), jnp.ones(N_P), stochastic=False, scheduler=fixed(1.0))
ens_teki, _, st = run(teki, X0_u, G_u, y_u, gamma_diag, key, N_ITER)
ens_eki_u, _, st2 = run(
    fxproc.EKI(stochastic=False, scheduler=fixed(1.0)), X0_u, G_u, y_u, gamma_diag, key, N_ITER
)
assert int(st) == int(st2) == fxproc.ProcessState.OK
ens_teki, ens_eki_u = np.asarray(ens_teki), np.asarray(ens_eki_u)

# the MAP: least squares of the augmented system
G_aug = np.vstack([G_u, np.eye(N_P)])
y_aug = np.concatenate([y_u, m0])
g_aug = np.concatenate([np.full(N_Y, GAMMA), np.diag(C0)])
w = 1 / np.sqrt(g_aug)
theta_map = np.linalg.lstsq(w[:, None] * G_aug, w * y_aug, rcond=None)[0]

# deterministic TEKI = the closed form on the augmented system (round-off, as in 5.1)
m_hat_u, C_hat_u = X0_u.mean(0), np.cov(X0_u, rowvar=False)
m_T, C_T = kalman(m_hat_u, C_hat_u, G_aug, y_aug, g_aug, T=float(N_ITER))
assert np.abs(ens_teki[-1].mean(0) - m_T).max() < 1e-9
assert np.abs(np.cov(ens_teki[-1], rowvar=False) - C_T).max() < 1e-9
# theta_4: TEKI shrinks it to the prior mean, EKI leaves it near the initial 3
print(
    f"theta_4 after {N_ITER} steps: TEKI {ens_teki[-1, :, 3].mean():+.3f} (MAP 0), "
    f"EKI {ens_eki_u[-1, :, 3].mean():+.3f}"
)
assert abs(theta_map[3]) < 1e-12
assert abs(ens_teki[-1, :, 3].mean()) < 0.05  # O(1/T) from the MAP: 3 / (1 + T) ~ 0.04
assert abs(ens_eki_u[-1, :, 3].mean() - 3.0) < 0.5
assert np.abs(ens_teki[-1].mean(0) - theta_map).max() < 0.05
# spread of theta_4: EKI keeps the initial one (the data carry no information on it; only
# sample correlations with the other parameters move it, ~10 %), TEKI contracts it
std0 = ens_teki[0, :, 3].std()
assert abs(ens_eki_u[-1, :, 3].std() / std0 - 1) < 0.1
assert ens_teki[-1, :, 3].std() < 0.2 * std0

it = np.arange(N_ITER + 1)
fig, ax = plt.subplots(figsize=(7, 3.8), constrained_layout=True)
for ens, label, colour in ((ens_eki_u, "EKI", "C1"), (ens_teki, "TEKI", "C2")):
    mean, std = ens[:, :, 3].mean(1), ens[:, :, 3].std(1)
    ax.plot(it, mean, color=colour, label=f"{label}: mean of $\\theta_4$")
    ax.fill_between(it, mean - 2 * std, mean + 2 * std, color=colour, alpha=0.2)
ax.axhline(0.0, color="0.3", ls=":", label="prior mean $m_0$ = MAP")
ax.set_xscale("symlog", linthresh=1)
ax.set_xlim(0, N_ITER)
ax.set_xlabel("iteration ($\\Delta t = 1$)")
ax.set_ylabel("$\\theta_4$ (unidentifiable)")
ax.set_title("TEKI shrinks an unidentifiable parameter to the prior; EKI does not")
ax.legend()
plt.show()
