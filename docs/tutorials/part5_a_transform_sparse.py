# %% [markdown]
# # 5.A Ensemble Kalman inversion (2): ETKI and sparse EKI
#
# The two deterministic-transform and regularised members of the EKI family; the EKI
# update itself, its tempering and its collapse are on the previous page,
# [5.A (1)](../part5_a_inversion/). The problem is the same small linear one: $N_p = 4$
# parameters, $N_y = 8$ data, $\Gamma = 0.5\,I$ (0.05 for the sparse demo), prior
# $\mathcal N(0, I)$, $N_e = 100$. Each run is one `lax.scan` of `update`, compiled once per
# process (20 steps; 5.4 looks at the first).

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
# ## 5.4 ETKI: ensemble transform Kalman inversion (Huang, Huang, Reich & Stuart 2022)
#
# ETKI is the ETKF analysis applied to the inverse problem, in ensemble space. With the
# normalised anomalies $X = (\theta - \bar\theta)/\sqrt{J-1}$ and $Y = (G - \bar G)/\sqrt{J-1}$,
#
# $$\Omega = (I + \Delta t\, Y^\top \Gamma^{-1} Y)^{-1},\quad
# w = \Delta t\,\Omega Y^\top \Gamma^{-1}(y - \bar G),\quad
# \theta_j \leftarrow \bar\theta + X\big(w + \sqrt{J-1}\,\Omega^{1/2}\big)_{:, j}.$$
#
# No perturbations: for a linear $G$ the new mean and covariance are the Kalman posterior of
# the sample statistics exactly, and it coincides with the deterministic EKI of 5.1 member by
# member (same symmetric square root). The stochastic EKI has the right covariance only in
# expectation.

# %%
N_ITER = 20
eki_det = fxproc.EKI(stochastic=False, scheduler=fixed(1.0))
ens_etki, _, st = run(fxproc.ETKI(scheduler=fixed(1.0)), X0, G, y, gamma_diag, key, N_ITER)
ens_deki, _, _ = run(eki_det, X0, G, y, gamma_diag, key, N_ITER)
ens_seki, _, _ = run(fxproc.EKI(scheduler=fixed(1.0)), X0, G, y, gamma_diag, key, N_ITER)
assert int(st) == fxproc.ProcessState.OK
ens_etki, ens_deki, ens_seki = (np.asarray(e[1]) for e in (ens_etki, ens_deki, ens_seki))
m_1, C_1 = kalman(m_hat, C_hat, G, y, np.full(N_Y, GAMMA))
cov_err = {
    name: np.abs(np.cov(e, rowvar=False) - C_1).max()
    for name, e in (("ETKI", ens_etki), ("EKI det.", ens_deki), ("EKI stoch.", ens_seki))
}
print({k: f"{v:.1e}" for k, v in cov_err.items()}, "(|cov - Kalman|)")
assert np.abs(ens_etki.mean(0) - m_1).max() < 1e-10 and cov_err["ETKI"] < 1e-10
assert np.abs(ens_etki - ens_deki).max() < 1e-10  # the same transform, member by member
assert cov_err["EKI stoch."] > 1e-4  # sampling noise of the perturbed observations

fig, ax = plt.subplots(figsize=(5.5, 4.5), constrained_layout=True)
ax.scatter(X0[:, 0], X0[:, 1], s=8, color="0.7", label="initial ensemble")
ax.scatter(ens_seki[:, 0], ens_seki[:, 1], s=10, color="C0", label="EKI (stochastic)")
ax.scatter(ens_etki[:, 0], ens_etki[:, 1], s=10, color="C3", marker="x", label="ETKI")
vals, vecs = np.linalg.eigh(C_1[:2, :2])
angle = np.linspace(0, 2 * np.pi, 200)
circle = 2 * vecs @ (np.sqrt(vals)[:, None] * np.stack([np.cos(angle), np.sin(angle)]))
ax.plot(m_1[0] + circle[0], m_1[1] + circle[1], "k-", lw=1, label="Kalman 2-sigma")
ax.set_xlabel(r"$\theta_1$")
ax.set_ylabel(r"$\theta_2$")
ax.set_title("one update, dt = 1 (first two parameters)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 5.5 Sparse EKI (Schneider, Stuart & Wu 2022)
#
# `SparseInversion` follows each EKI step by an $L^1$ proximal step. With $C_+$ the updated
# covariance and $\lambda$ the `l1_weight`, each member's entries are soft-thresholded,
#
# $$\theta_{j,i} \leftarrow \operatorname{sign}(\theta^{\text{EKI}}_{j,i})
# \max\big(|\theta^{\text{EKI}}_{j,i}| - \Delta t\,\lambda\,(C_+)_{ii},\, 0\big),$$
#
# and entries below `threshold_value` are set to zero. Inactive parameters are driven to
# **exactly** 0, where plain EKI leaves them at noise level. The truth here has two zero
# entries, $\theta^\dagger = (1.5, 0, -1, 0)$.

# %%
theta_sparse = np.array([1.5, 0.0, -1.0, 0.0])
GAMMA_S = 0.05
y_s = G @ theta_sparse + np.sqrt(GAMMA_S) * rng.normal(size=N_Y)
gamma_s = jnp.full(N_Y, GAMMA_S)
sparse = fxproc.SparseInversion(
    l1_weight=jnp.asarray(20.0),
    threshold_value=jnp.asarray(0.05),
    stochastic=False,
    scheduler=fixed(1.0),
)
ens_sp, _, st = run(sparse, X0, G, y_s, gamma_s, key, N_ITER)
ens_ek, _, _ = run(eki_det, X0, G, y_s, gamma_s, key, N_ITER)
assert int(st) == fxproc.ProcessState.OK
mean_sp, mean_ek = np.asarray(ens_sp[-1]).mean(0), np.asarray(ens_ek[-1]).mean(0)
print("truth        ", theta_sparse)
print("sparse EKI   ", mean_sp.round(4))
print("EKI          ", mean_ek.round(4))
inactive = theta_sparse == 0
assert np.all(np.asarray(ens_sp[-1])[:, inactive] == 0.0)  # exactly zero, every member
assert np.all(np.abs(mean_ek[inactive]) > 1e-4)  # plain EKI: small but non-zero
# the L1 penalty biases the active ones toward 0 (the LASSO's shrinkage): smaller in
# magnitude than EKI's, same sign, within 0.45 of the truth at this lambda
assert np.all(np.abs(mean_sp[~inactive]) < np.abs(mean_ek[~inactive]))
assert np.all(np.sign(mean_sp[~inactive]) == np.sign(theta_sparse[~inactive]))
assert np.abs(mean_sp[~inactive] - theta_sparse[~inactive]).max() < 0.45

fig, ax = plt.subplots(figsize=(6.5, 3.6), constrained_layout=True)
idx = np.arange(N_P)
ax.bar(idx - 0.25, theta_sparse, 0.25, color="0.3", label="truth")
ax.bar(idx, mean_ek, 0.25, color="C1", label="EKI")
ax.bar(idx + 0.25, mean_sp, 0.25, color="C4", label="SparseInversion")
ax.axhline(0.0, color="k", lw=0.6)
ax.set_xticks(idx, [f"$\\theta_{i + 1}$" for i in idx])
ax.set_ylabel("ensemble mean after 20 steps")
ax.set_title("sparse EKI sets the inactive parameters to exactly zero")
ax.legend()
plt.show()
