# %% [markdown]
# # 5.A Ensemble Kalman inversion (2): GNKI, ETKI and sparse EKI
#
# The Gauss-Newton, deterministic-transform and sparse members of the EKI family; the EKI
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
# ## 5.3 GNKI: Gauss-Newton Kalman inversion (Chada, Chen & Sanz-Alonso 2021)
#
# GNKI takes a damped Gauss-Newton step per member with the Jacobian replaced by its
# ensemble least-squares estimate $\hat G = C^{G\theta}(C^{\theta\theta})^{-1}$,
#
# $$\theta_j \leftarrow (1 - \Delta t)\,\theta_j + \Delta t\Big(m_0 + K\big(y - G(\theta_j)
# - \hat G (m_0 - \theta_j)\big)\Big),\qquad
# K = C_0 \hat G^\top (\hat G C_0 \hat G^\top + \Gamma)^{-1}$$
#
# (deterministic form; the stochastic one perturbs $m_0$ and $y$). Inverting
# $C^{\theta\theta}$ needs more members than parameters, $N_e > N_p$. For a linear $G$,
# $\hat G = G$ exactly, so one step with $\Delta t = 1$ sends **every member** to the
# posterior mean of the prior $\mathcal N(m_0, C_0)$ — whatever the initial ensemble.

# %%
gnki = fxproc.GNKI(jnp.zeros(N_P), jnp.ones(N_P), stochastic=False, scheduler=fixed(1.0))
X0_small = X0[:10]  # 10 members > 4 parameters
ens_gn, _, st = run(gnki, X0_small, G, y, gamma_diag, key, 1)
assert int(st) == fxproc.ProcessState.OK
gap = np.abs(np.asarray(ens_gn[1]) - m_post[None, :]).max()
print(f"one GNKI step: max over members |theta_j - posterior mean| = {gap:.1e}")
assert gap < 1e-9  # the exact Gauss-Newton step of a quadratic: round-off only

try:  # N_e <= N_p: refused at trace time with the fix in the message
    gnki.init(X0[:4], y, GAMMA)
    raise AssertionError("GNKI accepted N_e = N_p")
except ValueError as err:
    print("N_e = N_p:", str(err).split(";")[0])
    assert "more ensemble members than parameters" in str(err)

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
# the sample statistics exactly (the stochastic EKI has them only in expectation). It is the
# same transform as `EKI(stochastic=False)`, which [5.1](../part5_a_inversion/) checks
# against the same closed form. The symmetric square root $\Omega^{1/2}$ is the transform
# closest to the identity: each member's anomaly is contracted, not rotated, so members
# keep their identity (the arrows below).

# %%
N_ITER = 20
etki = fxproc.ETKI(scheduler=fixed(1.0))
ens_etki_all, _, st = run(etki, X0, G, y, gamma_diag, key, N_ITER)
assert int(st) == fxproc.ProcessState.OK
ens_etki = np.asarray(ens_etki_all[1])  # after one update
m_1, C_1 = kalman(m_hat, C_hat, G, y, np.full(N_Y, GAMMA))
err_mean = np.abs(ens_etki.mean(0) - m_1).max()
err_cov = np.abs(np.cov(ens_etki, rowvar=False) - C_1).max()
print(f"ETKI, one update: |mean - Kalman| = {err_mean:.1e}, |cov - Kalman| = {err_cov:.1e}")
assert err_mean < 1e-10 and err_cov < 1e-10  # an algebraic identity: round-off only
# the transform is the symmetric root: the anomalies are scaled, not rotated or shuffled, so
# member j stays the "same" member (its anomaly keeps a positive inner product)
anom0, anom1 = X0 - X0.mean(0), ens_etki - ens_etki.mean(0)
assert np.all(np.sum(anom0 * anom1, axis=1) > 0)

fig, ax = plt.subplots(figsize=(5.5, 4.5), constrained_layout=True)
ax.scatter(X0[:, 0], X0[:, 1], s=8, color="0.7", label="initial ensemble")
ax.scatter(ens_etki[:, 0], ens_etki[:, 1], s=12, color="C3", marker="x", label="ETKI")
for j in range(0, N_E, 10):  # where a few members went
    ax.annotate(
        "", ens_etki[j, :2], X0[j, :2], arrowprops={"arrowstyle": "->", "color": "0.5", "lw": 0.6}
    )
vals, vecs = np.linalg.eigh(C_1[:2, :2])
angle = np.linspace(0, 2 * np.pi, 200)
circle = 2 * vecs @ (np.sqrt(vals)[:, None] * np.stack([np.cos(angle), np.sin(angle)]))
ax.plot(m_1[0] + circle[0], m_1[1] + circle[1], "k-", lw=1, label="Kalman 2-sigma")
ax.set_xlabel(r"$\theta_1$")
ax.set_ylabel(r"$\theta_2$")
ax.set_title("one ETKI update, dt = 1 (first two parameters)")
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
# **exactly** 0, where the unpenalised update (the square-root EKI step, i.e. ETKI; the
# sparse run uses `stochastic=False` too) leaves them at noise level. The truth here has two zero
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
ens_ek, _, _ = run(etki, X0, G, y_s, gamma_s, key, N_ITER)  # no penalty
assert int(st) == fxproc.ProcessState.OK
mean_sp, mean_ek = np.asarray(ens_sp[-1]).mean(0), np.asarray(ens_ek[-1]).mean(0)
print("truth        ", theta_sparse)
print("sparse EKI   ", mean_sp.round(4))
print("ETKI         ", mean_ek.round(4))
inactive = theta_sparse == 0
assert np.all(np.asarray(ens_sp[-1])[:, inactive] == 0.0)  # exactly zero, every member
assert np.all(np.abs(mean_ek[inactive]) > 1e-4)  # unpenalised: small but non-zero
# the L1 penalty biases the active ones toward 0 (the LASSO's shrinkage): smaller in
# magnitude than EKI's, same sign, within 0.45 of the truth at this lambda
assert np.all(np.abs(mean_sp[~inactive]) < np.abs(mean_ek[~inactive]))
assert np.all(np.sign(mean_sp[~inactive]) == np.sign(theta_sparse[~inactive]))
assert np.abs(mean_sp[~inactive] - theta_sparse[~inactive]).max() < 0.45

fig, ax = plt.subplots(figsize=(6.5, 3.6), constrained_layout=True)
idx = np.arange(N_P)
ax.bar(idx - 0.25, theta_sparse, 0.25, color="0.3", label="truth")
ax.bar(idx, mean_ek, 0.25, color="C3", label="ETKI (no penalty)")
ax.bar(idx + 0.25, mean_sp, 0.25, color="C4", label="SparseInversion")
ax.axhline(0.0, color="k", lw=0.6)
ax.set_xticks(idx, [f"$\\theta_{i + 1}$" for i in idx])
ax.set_ylabel("ensemble mean after 20 steps")
ax.set_title("sparse EKI sets the inactive parameters to exactly zero")
ax.legend()
plt.show()
