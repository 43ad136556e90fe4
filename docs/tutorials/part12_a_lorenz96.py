# %% [markdown]
# # 12.A (2) Lorenz-96: LETKF with adaptive inflation
#
# The operational analogue: a spatially extended chaotic system, more variables than
# members, a local analysis at every grid point and an inflation factor nobody wants to
# tune by hand. Lorenz-96 on a ring of $N_x = 40$ sites,
#
# $$\frac{dx_i}{dt} = (x_{i+1} - x_{i-2})\,x_{i-1} - x_i + F,\qquad F = 8,$$
#
# every site observed every $\Delta t = 0.05$ with $R = I$ (Sakov & Oke 2008,
# `presets.lorenz96_sakov2008`), assimilated by the LETKF with $N_e = 10 < N_x$ members and
# DAPPER's localisation `loc_rad = 6` (Gaspari–Cohn half-width $c = 6 \times 1.82$).
#
# **Adaptive inflation** (`AdaptiveInflator`: Anderson 2009 in Miyoshi's 2011 Gaussian
# form). The covariance factor $\lambda$ ($P^f \leftarrow \lambda P^f$, anomalies
# $\times\sqrt\lambda$) is estimated every cycle from the innovation statistics
# $\mathbb E[d d^\top] = \lambda H P^f H^\top + R$, $d = y - \overline{H(X^f)}$. With
# $T = \operatorname{tr}(R^{-1} H P^f H^\top)$ over the $p$ observations, the cycle's
# observation of $\lambda$ and its error variance are
#
# $$\lambda^o = \frac{d^\top R^{-1} d - p}{T},\qquad
# v^o = \frac{2}{p}\Big(\frac{\lambda^b T + p}{T}\Big)^2,$$
#
# and the Gaussian prior $\mathcal N(\lambda^b, v)$ (the last estimate, with a fixed
# variance $v$) is updated to
# $\lambda^a = (v^o\lambda^b + v\,\lambda^o)/(v^o + v)$, clamped at $\ge 1$.
# With $v \to 0$ the prior dominates and $\lambda$ stays at $\lambda^b$: the same module is
# then a fixed inflation, which lets the page run "no inflation", DAPPER's tuned fixed
# inflation (anomalies $\times 1.04$, i.e. $\lambda = 1.04^2$) and the adaptive estimate
# ($v = 0.1^2$) as ONE vmapped run.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import presets

jax.config.update("jax_enable_x64", True)

N_CYCLES, BURN_IN = 400, 100  # docs size (the leaderboard: 3000-5000 cycles)
N_E, RADIUS = 10, 6 * 1.82
ssm = presets.lorenz96_sakov2008()
published = dict(ssm.published_rmse)["LETKF N=10 infl=1.04 loc_rad=6"]
SETTINGS = {  # (lambda_b, v)
    "no inflation": (1.0, 1e-12),
    "fixed, x1.04 (DAPPER)": (1.04**2, 1e-12),
    "adaptive": (1.0, 0.1**2),
}


@jax.jit
def experiment(key, lam0, var):
    twin = ssm.simulate(jax.random.fold_in(key, 0), N_CYCLES)
    ens0 = ssm.initial_ensemble(jax.random.fold_in(key, 1), N_E)

    def one(lam, v):
        method = ff.EnsembleFilter(ff.LETKF(radius=RADIUS), inflator=fxp.AdaptiveInflator(lam, v))
        out = ff.run(
            method,
            ssm,
            ens0,
            twin.observations,
            twin.times,
            key=jax.random.fold_in(key, 2),
            save="ensembles",
        )
        inflation = out.diagnostics[0].inflation  # the inflator's state, every cycle
        return out.analysis_mean, out.analysis_spread, out.analyses, inflation

    return twin, jax.vmap(one)(lam0, var)


lam0, var = (jnp.asarray(v) for v in zip(*SETTINGS.values(), strict=True))
twin, (means, spreads, ensembles, inflation) = experiment(jax.random.key(0), lam0, var)
truth, obs = np.asarray(twin.truth), np.asarray(twin.observations)
means, spreads, inflation = np.asarray(means), np.asarray(spreads), np.asarray(inflation)
err_t = np.sqrt(np.mean((means - truth) ** 2, axis=2))  # (setting, time)
rmse_a = err_t[:, BURN_IN:].mean(1)
print(f"published (DAPPER) LETKF N=10 infl=1.04 loc_rad=6: rmse.a = {published}")
for i, name in enumerate(SETTINGS):
    print(
        f"{name:22s} rmse.a = {rmse_a[i]:.3f}  spread.a = {spreads[i, BURN_IN:].mean():.3f}  "
        f"mean lambda = {inflation[i, BURN_IN:].mean():.4f}"
    )

# %% [markdown]
# Asserted: with $v = 10^{-12}$ the factor stays at $\lambda_b$ (to 1e-8, the prior
# dominating a likelihood of order one); the fixed run scores at DAPPER's published level
# (0.20; band 0.15–0.26 for a 300-cycle score); the adaptive run, with no tuning at all,
# comes within 10 % of the tuned fixed inflation and beats no inflation; and its estimate
# settles above 1 (the filter needs inflation: sampling error and the nonlinear forecast
# make the raw ensemble under-dispersive).

# %%
assert np.max(np.abs(inflation[0] - 1.0)) < 1e-8
assert np.max(np.abs(inflation[1] - 1.04**2)) < 1e-8
assert 0.15 < rmse_a[1] < 0.26, rmse_a
assert rmse_a[2] < 1.1 * rmse_a[1] and rmse_a[2] < rmse_a[0], rmse_a
assert 1.0 < inflation[2, BURN_IN:].mean() < 1.2

# %% [markdown]
# ## 12.2 The per-grid-point posterior
#
# The LETKF's posterior is a local one: every site has its own analysis. Below, left: the
# posterior at the last cycle, site by site (truth, observation, ensemble mean $\pm 2$
# standard deviations of the 10 members) for the adaptive run; right: per site, the
# time-mean analysis error against the time-mean ensemble spread, for each inflation
# setting. A calibrated filter has its spread equal to its error at every site; without
# inflation the spread is too small everywhere, the tuned fixed factor slightly over-spreads
# and the adaptive estimate (about 1.02 here) slightly under-spreads while scoring as well.
# Below them, the adaptive inflation factor over time.

# %%
ens = np.asarray(ensembles[2])  # the adaptive run's analyses, (T, N_e, N_x)
site_rmse = np.sqrt(np.mean((means[:, BURN_IN:] - truth[BURN_IN:]) ** 2, axis=1))  # (set, N_x)
site_spread = np.sqrt(np.mean(np.var(np.asarray(ensembles)[:, BURN_IN:], axis=2, ddof=1), axis=1))
ratio = site_spread / site_rmse
median_ratio = np.median(ratio, axis=1)
for name, r, lo, hi in zip(SETTINGS, median_ratio, ratio.min(1), ratio.max(1), strict=True):
    print(f"{name:22s} spread / error per site: median {r:.2f}, range {lo:.2f}-{hi:.2f}")
# the median site of the adaptive run is calibrated to within 25 % (adaptive inflation
# matches the innovation statistics, a global constraint; 300 cycles of one run make the
# per-site error itself a noisy estimate, hence the median), and without inflation the
# ensemble is over-confident: spread well below the error
assert 0.75 < median_ratio[2] < 1.25, median_ratio
assert median_ratio[0] < 0.75 and median_ratio[0] < median_ratio[2]

fig = plt.figure(figsize=(12, 7), constrained_layout=True)
grid = fig.add_gridspec(2, 2, height_ratios=[1.3, 1])
ax0, ax1 = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
ax2 = fig.add_subplot(grid[1, :])
sites = np.arange(ssm.n_state)
last_mean, last_std = ens[-1].mean(0), ens[-1].std(0, ddof=1)
ax0.fill_between(
    sites,
    last_mean - 2 * last_std,
    last_mean + 2 * last_std,
    color="C2",
    alpha=0.3,
    label="analysis mean ± 2 sd",
)
ax0.plot(sites, ens[-1].T, color="C2", lw=0.4, alpha=0.5)
ax0.plot(sites, last_mean, color="C2", lw=1.5)
ax0.plot(sites, truth[-1], "k-", lw=1.5, label="truth")
ax0.plot(sites, obs[-1], "o", color="0.5", ms=3, label="observation")
ax0.set_xlabel("site $i$")
ax0.set_ylabel("$x_i$")
ax0.set_title("posterior at the last cycle (adaptive)")
ax0.legend(fontsize=8)
for i, (name, colour) in enumerate(zip(SETTINGS, ("C3", "C0", "C2"), strict=True)):
    ax1.plot(sites, site_rmse[i], "-", color=colour, label=f"{name}: error")
    ax1.plot(sites, site_spread[i], "--", color=colour, label=f"{name}: spread")
ax1.set_xlabel("site $i$")
ax1.set_ylabel("time mean after burn-in")
ax1.set_title("per-site error (solid) and spread (dashed)")
ax1.legend(fontsize=7, ncols=2)
t = np.asarray(twin.times)
ax2.plot(t, inflation[2], color="C2", label=r"adaptive $\lambda$")
ax2.axhline(1.04**2, color="C0", ls="--", label=r"DAPPER's tuned $1.04^2$")
ax2.axvline(t[BURN_IN], color="0.6", lw=0.8)
ax2.set_xlabel("time")
ax2.set_ylabel(r"inflation factor $\lambda$")
ax2.legend(fontsize=8)
plt.show()
