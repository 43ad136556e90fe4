# %% [markdown]
# # 13.4 · EnVar: hybrid variational–ensemble assimilation
#
# 3D-Var uses a static, full-rank, climatological background covariance $B_c$; an ensemble
# filter uses the flow-dependent but rank-deficient ensemble covariance $P_e$. EnVar (Part 13.C,
# tutorial 13.4) puts both into one variational cost through the hybrid covariance
#
# $$B = \beta_c B_c + \beta_e\,(L \circ P_e),\qquad
# P_e = \frac{1}{N_e - 1}\sum_i x'_i x'^\top_i,$$
#
# with $L$ a localisation matrix (Schur product $\circ$). $B$ is never formed: the increment
# is written in control variables $v = (v_c, v_1, \dots, v_{N_e})$ (the "alpha" control
# variable),
#
# $$\delta x = \sqrt{\beta_c}\,B_c^{1/2} v_c
# + \sqrt{\tfrac{\beta_e}{N_e - 1}}\sum_{i=1}^{N_e} x'_i \circ (L^{1/2} v_i),\qquad
# J(v) = \tfrac12\|v\|^2 + \tfrac12\|d - H\,\delta x\|^2_{R^{-1}},$$
#
# and minimised by conjugate gradients. `filterax.zoo.EnVar` cycles it with an ensemble
# (analysed by any kernel, here the ETKF, then re-centred on the hybrid analysis); `lag > 1`
# gives 4D-EnVar. This page checks its two limits and sweeps $\beta_c$ on Lorenz-96.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import EnVar, Var3D, presets

jax.config.update("jax_enable_x64", True)

N_CYCLES = 600  # docs size: cycles of the Lorenz-96 sweep (the leaderboard: 10 000)
BETAS = (0.0, 5e-4, 2e-3, 1e-2)  # docs size: beta_c values of the sweep (beta_e = 1)
CG_EXACT = {"rtol": 1e-12, "atol": 1e-12}  # CG tolerances for the identities

# %% [markdown]
# ## 13.4 The two limits
#
# - $\beta_e = 0$: $B = \beta_c B_c$, i.e. **3D-Var** (`Var3D(B_c, xB=beta_c)`). For a linear
#   model the ensemble mean's forecast is the forecast of the mean, so the whole cycled run
#   equals the cycled 3D-Var.
# - $\beta_c = 0$ without localisation: $B = P_e$, i.e. the **ensemble Kalman mean update**
#   $\bar x^a = \bar x^f + P_e H^\top(HP_eH^\top + R)^{-1}(y - H\bar x^f)$ — the ETKF's mean,
#   so the cycled run equals the ETKF's.
#
# Checked over five cycles of a six-variable linear model with four observations.

# %%
rng = np.random.default_rng(0)
n_x, n_y, n_e, n_t = 6, 4, 5, 5
A = jnp.asarray(np.eye(n_x) + 0.1 * rng.standard_normal((n_x, n_x)))
H = jnp.asarray(rng.standard_normal((n_y, n_x)))
r = jnp.asarray(0.3 + rng.random(n_y))
q = rng.standard_normal((n_x, n_x))
B_c = jnp.asarray(q @ q.T / n_x + 0.5 * np.eye(n_x))
E0 = jnp.asarray(rng.standard_normal((n_e, n_x)))
ys = jnp.asarray(rng.standard_normal((n_t, n_y)))
linear = fxp.Model(dynamics=lambda x, t0, t1: A @ x, obs_op=H, obs_noise=r)
times = jnp.arange(1.0, n_t + 1)


def run(method, initial):
    return ff.run(method, linear, initial, ys, times, key=jax.random.key(0))


# the weights as arrays (dynamic fields): both EnVar runs share one compiled program
envar_3dvar = run(
    EnVar(ff.ETKF(), B_c, beta_c=jnp.asarray(0.7), beta_e=jnp.asarray(0.0), **CG_EXACT), E0
)
envar_ens = run(
    EnVar(ff.ETKF(), B_c, beta_c=jnp.asarray(0.0), beta_e=jnp.asarray(1.0), **CG_EXACT), E0
)
etkf = run(ff.ETKF(), E0)

# the closed form of the first cycle's ensemble Kalman mean, in numpy
Ef = np.asarray(E0) @ np.asarray(A).T
xf, X = Ef.mean(0), Ef - Ef.mean(0)
P_e = X.T @ X / (n_e - 1)
Hn = np.asarray(H)
closed = xf + P_e @ Hn.T @ np.linalg.solve(Hn @ P_e @ Hn.T + np.diag(r), ys[0] - Hn @ xf)

# cycled 3D-Var with B = 0.7 B_c, in numpy (what Var3D(B_c, xB=0.7) computes)
x_a, var3d_means = np.asarray(E0).mean(0), []
for y in np.asarray(ys):
    x_f = np.asarray(A) @ x_a
    B = 0.7 * np.asarray(B_c)
    Hn_ = np.asarray(H)
    x_a = x_f + B @ Hn_.T @ np.linalg.solve(Hn_ @ B @ Hn_.T + np.diag(r), y - Hn_ @ x_f)
    var3d_means.append(x_a)
gap_3dvar = float(jnp.max(jnp.abs(envar_3dvar.analysis_mean - np.stack(var3d_means))))
gap_ens = float(jnp.max(jnp.abs(envar_ens.analysis_mean - etkf.analysis_mean)))
gap_closed = float(jnp.max(jnp.abs(envar_ens.analysis_mean[0] - closed)))
print(f"beta_e = 0: max |EnVar - 3D-Var| over {n_t} cycles = {gap_3dvar:.1e}")
print(
    f"beta_c = 0: max |EnVar - ETKF| over {n_t} cycles = {gap_ens:.1e}, "
    f"first cycle vs closed form {gap_closed:.1e}"
)
# The CG solves stop at relative residual 1e-12; the control-space
# Hessians have condition < 1e3 (eigenvalues >= 1), so 1e-8 bounds the solver error with a
# wide margin, while a wrong weight or a missed sqrt(N_e - 1) is O(1e-1).
assert gap_3dvar < 1e-8 and gap_ens < 1e-8 and gap_closed < 1e-8

# %% [markdown]
# ## 13.4 A $\beta$ sweep on Lorenz-96 beside the ETKF and 3D-Var
#
# The Lorenz-96 twin of Sakov & Oke (2008) (40 variables, all observed every $0.05$,
# $R = I$), $N_e = 20$, inflation 1.04 and random rotations, no localisation; $B_c$ is the
# climatological covariance from an independent free run (`StateSpaceModel.climatology`);
# $\beta_e = 1$ and $\beta_c$ swept. The whole sweep is one compiled program (`jax.vmap`
# of `run` over $\beta_c$). Its $\beta_c = 0$ member *is* the ETKF with the same settings
# (the identity above, with the same keys), and beside it runs 3D-Var with DAPPER's setting
# $B = 0.02\,B_c$.

# %%
ssm = presets.lorenz96_sakov2008()
N_CLIM = 10_400  # the default length of StateSpaceModel.climatology (burn-in included)
_, B_clim = ssm.climatology(jax.random.key(99), n_cycles=N_CLIM)
full = ssm.simulate(jax.random.key(0), N_CLIM)  # the same compiled simulation, another key
truth, observations, times96 = (a[:N_CYCLES] for a in (full.truth, full.observations, full.times))
ens0 = ssm.initial_ensemble(jax.random.key(1), 20)
infl = fxp.MultiplicativeInflator(1.04)
burn = ssm.burn_in_cycles


@jax.jit
def sweep(beta_c):
    def one(beta):
        method = EnVar(ff.ETKF(), B_clim, beta_c=beta, beta_e=1.0, inflator=infl, rotate=True)
        out = ff.run(method, ssm, ens0, observations, times96, key=jax.random.key(2), throw=False)
        return jnp.mean(jnp.sqrt(jnp.mean((out.analysis_mean - truth) ** 2, axis=1))[burn:])

    return jax.vmap(one)(beta_c)


rmse_envar = np.asarray(sweep(jnp.asarray(BETAS)))
out_var = ff.run(
    Var3D(B_clim, xB=0.02, spread=False),
    ssm,
    ssm.x0_mean,
    observations,
    times96,
    key=jax.random.key(2),
)
rmse_var = float(out_var.scores(truth, burn)["rmse_a"])
rmse_etkf = float(rmse_envar[0])  # beta_c = 0, no localisation: the ETKF (asserted above)

print(f"{'method':24s} {'rmse.a (this page)':>18s} {'leaderboard':>20s}")
leaderboard = {0.0: "0.193 (ETKF ~0.20)", 5e-4: "0.201", 2e-3: "0.231"}
for beta, value in zip(BETAS, rmse_envar, strict=True):
    print(f"{'EnVar, beta_c = ' + str(beta):24s} {value:18.3f} {leaderboard.get(beta, '—'):>20s}")
print(f"{'3D-Var (xB = 0.02)':24s} {rmse_var:18.3f} {'0.415':>20s}")

# %% [markdown]
# The leaderboard numbers (`filterax-bench`, `EnVar-20` tuning on seed 100 over 1000 cycles;
# `Var3D` over seeds 0–2, DAPPER's published 3D-Var is 0.41) show the same shape as this
# shorter run: on a fully observed Lorenz-96 with 20 members the ensemble covariance is
# already good, so the static part only dilutes it — the best $\beta_c$ is the smallest —
# while every hybrid beats 3D-Var by a wide margin. (With few members or sparse observations
# the static part is what keeps the analysis stable; that is where hybrids earn their keep.)
# Asserted, with bounds loose enough for one short seed: the hybrids with small $\beta_c$
# beat 3D-Var, and both are far below the climatological error (3.6).

# %%
assert rmse_envar[1] < rmse_var and rmse_envar[2] < rmse_var
assert rmse_etkf < 0.3 and 0.25 < rmse_var < 0.7

fig, ax = plt.subplots(figsize=(7, 3.8), constrained_layout=True)
x_pos = np.arange(len(BETAS))
ax.plot(x_pos, rmse_envar, "o-", color="C0", label=r"EnVar ($\beta_e = 1$)")
ax.axhline(rmse_etkf, color="C1", ls="--", label=rf"ETKF ($\equiv \beta_c = 0$): {rmse_etkf:.3f}")
ax.axhline(rmse_var, color="C2", ls="-.", label=f"3D-Var ($x_B = 0.02$): {rmse_var:.3f}")
ax.set_xticks(x_pos, [f"{b:g}" for b in BETAS])
ax.set_xlabel(r"$\beta_c$ (weight of the climatological $B_c$)")
ax.set_ylabel("time-mean analysis RMSE")
ax.set_title(f"Lorenz-96, $N_e = 20$, {N_CYCLES - burn} cycles scored")
ax.legend(fontsize=8)
plt.show()
