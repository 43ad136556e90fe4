# %% [markdown]
# # 13.2 · The 4D-EnKF: observation-time-aware ensemble updates
#
# Operational systems gather the observations of a *window* and analyse them together. If
# the filter pretends they were all made at the analysis time it compares each observation
# with the wrong model state. The four-dimensional EnKF of Hunt et al. (2004) (Part 13.A,
# tutorial 13.2) instead compares each observation $y_j$ with the ensemble *trajectory* at its
# own time $t_j$, and computes one ETKF transform in ensemble space at the window end. With
# $G_j^\top G_j = R_j^{-1}$, the whitened normalised observed anomalies and innovations are
#
# $$S_j = (Y_j - \bar Y_j)\,G_j^\top/\sqrt{N_e - 1},\qquad \delta_j = G_j(y_j - \bar y_j),$$
#
# and, stacking the window ($S = [S_1, \dots, S_L]$, $\delta = [\delta_1; \dots; \delta_L]$),
#
# $$T = (I + S S^\top)^{-1/2},\qquad w = T^2 S\delta,\qquad
# X^a(t_L) = \mathbf 1\big(\bar x(t_L) + X'(t_L)^\top w/\sqrt{N_e - 1}\big)^\top + T X'(t_L).$$
#
# Only $SS^\top = \sum_j S_jS_j^\top$ and $S\delta = \sum_j S_j\delta_j$ enter, so the
# observations can arrive in any order. `filterax.zoo.EnKF4D(lag=L)` is this method as a
# cycled method of `filterax.filters.run`; `mode="3d"` is the shortcut that observes the
# window-end ensemble for every $y_j$.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import EnKF4D, presets

jax.config.update("jax_enable_x64", True)

N_CYCLES = 600  # docs size: cycles of the asynchronous Lorenz-96 run (the leaderboard: 5000)
LAG = 4  # observation times per 4D window (the leaderboard's K = 4)

# %% [markdown]
# ## 13.2 Multi-observation-window equivalence
#
# For a linear *perfect* model the ensemble-space posterior does not depend on how the
# observations are grouped: one 4D-EnKF analysis per window of `LAG` observation times gives
# the same window-end mean and covariance as the sequential ETKF that analyses every time.
# Checked on a six-variable linear model with a rank-deficient ensemble ($N_e = 4 < N_x$, so
# this is not just "both equal the Kalman filter") and a missing observation entry.

# %%
rng = np.random.default_rng(1)
n_x, n_y, n_e, n_t = 6, 5, 4, 8
A = jnp.asarray(np.eye(n_x) * 0.9 + 0.15 * rng.standard_normal((n_x, n_x)))
H = jnp.asarray(rng.standard_normal((n_y, n_x)))
r = jnp.linspace(0.5, 2.0, n_y)
ys = jnp.asarray(rng.standard_normal((n_t, n_y))).at[2, 1].set(jnp.nan)
E0 = jnp.asarray(rng.standard_normal((n_e, n_x)) + 1.0)
linear = fxp.Model(dynamics=lambda x, t0, t1: A @ x, obs_op=H, obs_noise=r)
times = jnp.arange(1.0, n_t + 1)

out4d = ff.run(EnKF4D(lag=LAG), linear, E0, ys, times, key=jax.random.key(0), save="ensembles")
outseq = ff.run(ff.ETKF(), linear, E0, ys, times, key=jax.random.key(0), save="ensembles")
ends = np.arange(LAG - 1, n_t, LAG)  # the window ends: cycles 3 and 7


def cov(ensemble):
    anom = ensemble - ensemble.mean(0)
    return anom.T @ anom / (ensemble.shape[0] - 1)


for k in ends:
    gap_m = float(jnp.max(jnp.abs(out4d.analysis_mean[k] - outseq.analysis_mean[k])))
    gap_c = float(jnp.max(jnp.abs(cov(out4d.analyses[k]) - cov(outseq.analyses[k]))))
    print(f"window end {k}: |mean 4D-EnKF - mean ETKF| = {gap_m:.1e}, |cov diff| = {gap_c:.1e}")
    # an algebraic identity (Gaussian conditioning in ensemble space): round-off only, ~1e-15
    # on this 6-variable problem; 1e-9 is the bound
    assert gap_m < 1e-9 and gap_c < 1e-9
assert bool(out4d.diagnostics.analysed[LAG - 1]) and not bool(out4d.diagnostics.analysed[0])

# %% [markdown]
# ## 13.2 Asynchronous observations on Lorenz-96
#
# The Lorenz-96 twin of Sakov & Oke (2008), every component observed every $0.05$, but the
# analysis is done only every `LAG` observation times (a $0.2$ window), as in the
# asynchronous experiments of Hunt et al.: each method reports, at every observation time,
# its best estimate from the observations it has assimilated so far. Three methods, $N_e = 20$,
# random rotations, the inflation factors of the leaderboard's `lorenz96_async_k4` rows:
#
# - the ETKF with an analysis at every observation time (the synchronous ideal, inflation
#   1.04);
# - the 4D-EnKF, one analysis per window, each observation compared with the trajectory at
#   its own time (inflation 1.2 per window);
# - the "3D" shortcut: the same windows, every observation compared with the window-end
#   ensemble (inflation 1.3).

# %%
ssm = presets.lorenz96_sakov2008()
twin = ssm.simulate(jax.random.key(0), N_CYCLES)
ens0 = ssm.initial_ensemble(jax.random.key(1), 20)
methods = {
    "ETKF, every time (sync)": ff.EnsembleFilter(
        ff.ETKF(), inflator=fxp.MultiplicativeInflator(1.04), rotate=True
    ),
    f"4D-EnKF, windows of {LAG}": EnKF4D(
        lag=LAG, inflator=fxp.MultiplicativeInflator(1.2), rotate=True
    ),
    f"3D shortcut, windows of {LAG}": EnKF4D(
        lag=LAG, inflator=fxp.MultiplicativeInflator(1.3), rotate=True, mode="3d"
    ),
}
leaderboard = {  # filterax-bench run, lorenz96_async_k4, 5000 cycles, seeds 0-2 (rmse.a)
    "ETKF, every time (sync)": "0.195 ± 0.001",
    f"4D-EnKF, windows of {LAG}": "0.261 ± 0.005",
    f"3D shortcut, windows of {LAG}": "1.339 ± 0.005",
}
outs, scores = {}, {}
for name, method in methods.items():
    outs[name] = ff.run(
        method, ssm, ens0, twin.observations, twin.times, key=jax.random.key(2), throw=False
    )
    scores[name] = float(outs[name].scores(twin.truth, ssm.burn_in_cycles)["rmse_a"])

print(f"{'method':28s} {'rmse.a (this page)':>18s} {'leaderboard':>15s}")
for name in methods:
    print(f"{name:28s} {scores[name]:18.3f} {leaderboard[name]:>15s}")

# %% [markdown]
# The ordering the leaderboard measured holds here: the 4D-EnKF pays only for the delay of
# its analyses, while treating a $0.2$ window's observations as simultaneous loses the truth
# (its error approaches the climatological 3.6 more than the filters' 0.2). The bounds below
# are loose because this run is short (`N_CYCLES` − burn-in cycles scored, one seed).

# %%
sync, four, three = (scores[n] for n in methods)
assert sync < four < three
assert four < 0.4 and three > 0.8

# %%
t = twin.times
rmse_t = {
    n: jnp.sqrt(jnp.mean((o.analysis_mean - twin.truth) ** 2, axis=1)) for n, o in outs.items()
}
fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(8, 5.5), constrained_layout=True)
for (name, err), colour in zip(rmse_t.items(), ["C0", "C1", "C2"], strict=True):
    ax0.semilogy(t, err, color=colour, lw=0.7, label=f"{name}: {scores[name]:.3f}")
ax0.axvline(t[ssm.burn_in_cycles], color="0.5", ls=":", label="end of burn-in")
ax0.set_xlabel("time")
ax0.set_ylabel("RMSE at each observation time")
ax0.legend(fontsize=8, ncols=2)
window = slice(N_CYCLES - 40, N_CYCLES)
for (name, err), colour in zip(rmse_t.items(), ["C0", "C1", "C2"], strict=True):
    ax1.plot(t[window], err[window], ".-", color=colour, lw=0.8, label=name)
ax1.set_xlabel("time (last 40 observation times: the saw-tooth is the window)")
ax1.set_ylabel("RMSE")
plt.show()
