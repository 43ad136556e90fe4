# %% [markdown]
# # 7.A Spread, RMSE and rank histograms
#
# Three numbers say whether a cycled ensemble filter is doing its job: its **error** (the
# RMSE of the ensemble mean against the truth, available only in a twin experiment), its
# **spread** (the uncertainty it claims), and whether the truth looks like one more member of
# the ensemble (the **rank histogram**). This page computes all three with
# `filterax.primitives` from what `filterax.filters.run` returns, on the Lorenz-96 benchmark of
# [Getting started](../getting_started/): 40 variables, all observed every $\Delta t = 0.05$
# with $R = I$, an ETKF with $N_e = 20$ (the symmetric transform, no random rotation).
#
# One knob changes the filter's health: the multiplicative inflation factor $\lambda$ applied
# to the analysis anomalies. The four runs below ($\lambda$ = 0.9, 1, 1.01, 1.2) are one
# compiled program (`jax.vmap` over $\lambda$, a dynamic field of `MultiplicativeInflator`).

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

N_CYCLES = 400  # docs size: DAPPER runs 1000+ cycles; the signatures are already clear
BURN_IN = 100  # cycles left out of every score (the filter's spin-up)
N_E = 20

ssm = presets.lorenz96_sakov2008()
twin = ssm.simulate(jax.random.key(0), N_CYCLES)
ens0 = ssm.initial_ensemble(jax.random.key(1), N_E)
LABELS = ("deflated 0.90", "none 1.00", "tuned 1.01", "over 1.20")
FACTORS = jnp.array([0.90, 1.00, 1.01, 1.20])
COLORS = ("C3", "C1", "C0", "C2")


@eqx.filter_jit
def sweep(factors):
    def one(factor):
        method = ff.EnsembleFilter(ff.ETKF(), inflator=fxp.MultiplicativeInflator(factor))
        return ff.run(
            method,
            ssm,
            ens0,
            twin.observations,
            twin.times,
            key=jax.random.key(2),
            save="forecast_and_analysis",  # keep both ensembles: the rank histograms need them
            throw=False,  # a collapsed filter is the point of one run: read its status instead
        )

    return jax.vmap(one)(factors)


outs = sweep(FACTORS)
print("forecast ensembles", outs.forecasts.shape, "analysis ensembles", outs.analyses.shape)

# %% [markdown]
# ## 7.1 Ensemble spread and RMSE: is the filter alive?
#
# With the analysis mean $\bar x_t$, the members $x^{(j)}_t$ and the truth $x^\text{true}_t$,
#
# $$\sigma_t = \sqrt{\frac{1}{N_x}\,\frac{1}{N_e - 1}\sum_{j=1}^{N_e}
# \big\|x^{(j)}_t - \bar x_t\big\|^2},\qquad
# \mathrm{RMSE}_t = \sqrt{\frac{1}{N_x}\big\|\bar x_t - x^\text{true}_t\big\|^2},$$
#
# and the reported scores are their time means after the burn-in,
# $\langle\sigma_t\rangle_t$ and $\langle \mathrm{RMSE}_t\rangle_t$ (DAPPER's `spread.a` and
# `rmse.a`). `fxp.rms_spread` and `fxp.rmse` compute them; `run` already stores
# $\sigma_t$ per cycle (`analysis_spread`) and `RunResult.scores` the time means. The page
# checks that the three routes agree. (Diagnostics of the four runs are computed in one
# jitted function, `jax.vmap`ped over the runs: one compilation instead of one per
# operation.)


# %%
@jax.jit
@jax.vmap
def spread_and_error(analyses, analysis_mean):
    return fxp.rms_spread(analyses), fxp.rmse(analysis_mean, twin.truth)


spread_t, rmse_t = spread_and_error(outs.analyses, outs.analysis_mean)  # (4, T) each
scores = outs.scores(twin.truth, BURN_IN)
# float64 round-off: the same sums in another order
assert np.allclose(spread_t, outs.analysis_spread, rtol=1e-12, atol=0)
assert np.allclose(rmse_t[:, BURN_IN:].mean(1), scores["rmse_a"], rtol=1e-12, atol=0)

# %% [markdown]
# How to read the pair: a filter is **alive** when its error stays well below the
# climatological spread of the model (3.6 for Lorenz-96) and its spread tracks its error. The
# spread–RMSE ratio $\langle\sigma_t\rangle / \langle \mathrm{RMSE}_t\rangle$
# (`fxp.spread_skill_ratio`, with `ensemble_size` so that a calibrated ensemble scores 1;
# see 7.5) summarises the second condition. A ratio far below one with a large RMSE is the
# classic **filter divergence**: the ensemble has collapsed, trusts its forecast, and ignores
# the observations.

# %%
ratio = jax.vmap(lambda s, e: fxp.spread_skill_ratio(s, e, ensemble_size=N_E))(
    outs.analysis_spread[:, BURN_IN:], rmse_t[:, BURN_IN:]
)
print(f"{'inflation':>14s} {'rmse.a':>8s} {'spread.a':>9s} {'ratio':>6s}  status")
for i, label in enumerate(LABELS):
    print(
        f"{label:>14s} {float(scores['rmse_a'][i]):8.3f} {float(scores['spread_a'][i]):9.3f} "
        f"{ratio[i]:6.2f}  {int(outs.status[i])}"
    )

t = np.asarray(twin.times)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
for i, (label, c) in enumerate(zip(LABELS, COLORS, strict=True)):
    axes[0].semilogy(t, rmse_t[i], color=c, lw=0.9, label=f"RMSE, {label}")
    axes[0].semilogy(t, outs.analysis_spread[i], color=c, lw=0.9, ls="--")
axes[0].axhline(3.6, color="0.5", ls=":", label="climatology")
axes[0].axvline(t[BURN_IN], color="0.7", lw=0.8)
axes[0].set_xlabel("time")
axes[0].set_ylabel("RMSE (solid), spread (dashed)")
axes[0].legend(fontsize=7, ncols=2)
axes[0].set_title("error and spread of the analysis")
axes[1].bar(np.arange(4), ratio, color=COLORS)
axes[1].axhline(1.0, color="k", lw=0.8)
axes[1].set_xticks(np.arange(4), LABELS, fontsize=8)
axes[1].set_ylabel("spread / RMSE (finite-$N_e$ corrected)")
axes[1].set_title("spread–RMSE ratio after burn-in")
plt.show()

# %% [markdown]
# The deflated filter ($\lambda = 0.9$) is dead: its spread falls to a few hundredths while
# its error climbs to the size of the climatology. The other three track the truth, and the
# ratio tells them apart: below one without inflation (over-confident), about one when tuned,
# well above one with too much inflation, which also pays for the extra spread with a
# larger error. The page asserts these readings.

# %%
rmse_a = np.asarray(scores["rmse_a"])
assert rmse_a[0] > 1.0 and ratio[0] < 0.1  # divergence: large error, collapsed spread
assert np.all(rmse_a[1:] < 0.45)  # the others track the truth (climatology 3.6)
assert 0.9 < ratio[2] < 1.12  # tuned: spread matches the error
assert ratio[1] < 0.95 and ratio[3] > 1.3  # too little / too much inflation

# %% [markdown]
# ## 7.2 Rank histograms: under-, well- and over-dispersive signatures
#
# For each time $t$ and component $i$, the rank of the verifying value among the members is
# the number of members below it,
#
# $$r_{t,i} = \#\{\,j : x^{(j)}_{t,i} < x^\text{true}_{t,i}\,\} \in \{0, \dots, N_e\},$$
#
# and the Talagrand diagram (Anderson 1996; Hamill 2001) counts the ranks over all
# $(t, i)$. If the truth is statistically indistinguishable from a member, every rank is
# equally likely: the histogram is **flat**. A **U** shape means the truth falls outside the
# ensemble too often (under-dispersive, over-confident), a **dome** that it sits in the middle
# too often (over-dispersive). The flatness statistic
# $\chi^2 = \sum_k (n_k - M/B)^2 / (M/B)$ over the $B = N_e + 1$ bins
# (`fxp.rank_histogram_chi2`), divided by $B - 1$, is about 1 for independent flat ranks
# (Candille & Talagrand 2005); ranks of neighbouring components and consecutive cycles are
# correlated, so read it as a relative measure here.
#
# Against **observations** instead of the truth (the only choice in real life), the members
# must first be perturbed with draws of the observation error, $H(x^{(j)}) + \eta^{(j)}$,
# $\eta^{(j)} \sim \mathcal N(0, R)$, and the ensemble must be the *forecast*, which has not
# seen $y$ (Hamill 2001, §4). The second row does that.


# %%
@jax.jit
def rank_diagnostics(analyses, forecasts, key):
    k_obs, k_ens, k_truth = jax.random.split(key, 3)
    b = BURN_IN
    truth_hist = jax.vmap(fxp.rank_histogram, in_axes=(0, None))(analyses[:, b:], twin.truth[b:])
    # H = I and R = I: perturb every forecast member with one N(0, 1) draw
    perturbed = forecasts[:, b:] + jax.random.normal(k_obs, forecasts[:, b:].shape)
    obs_hist = jax.vmap(fxp.rank_histogram, in_axes=(0, None))(perturbed, twin.observations[b:])
    # a reference for later: a "truth" drawn from the members' own distribution
    members = jax.random.normal(k_ens, (N_CYCLES, N_E, ssm.n_state))
    exchangeable = fxp.rank_histogram(members, jax.random.normal(k_truth, members[:, 0].shape))
    chi2 = jax.vmap(fxp.rank_histogram_chi2)
    return (
        truth_hist,
        obs_hist,
        chi2(truth_hist) / N_E,
        chi2(obs_hist) / N_E,
        fxp.rank_histogram_chi2(exchangeable) / N_E,
    )


truth_hist, obs_hist, delta_truth, delta_obs, delta_ref = map(
    np.asarray, rank_diagnostics(outs.analyses, outs.forecasts, jax.random.key(3))
)

fig, axes = plt.subplots(2, 3, figsize=(10, 5.2), sharex=True, constrained_layout=True)
for col, i in enumerate((1, 2, 3)):
    for row, (hists, deltas, what) in enumerate(
        ((truth_hist, delta_truth, "truth vs analysis"), (obs_hist, delta_obs, "obs vs forecast"))
    ):
        ax = axes[row, col]
        h = hists[i]
        ax.bar(np.arange(N_E + 1), h / h.mean(), color=COLORS[i], width=0.9)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_title(f"{LABELS[i]}: {what}\n$\\chi^2/(B-1)$ = {deltas[i]:.1f}", fontsize=8)
        ax.set_xlabel("rank")
for ax in axes[:, 0]:
    ax.set_ylabel("count / mean count")
plt.show()

# %% [markdown]
# The signatures are the textbook ones in the truth row: U without inflation, nearly flat
# for 1.01, a dome for 1.2. The observation row is much flatter: here the observation error
# ($R = 1$, standard deviation 1) is five times the ensemble spread (0.19), so the noise added
# to every member, and to the observation, swamps the dispersion error. Observation-space
# histograms lose their power when $R$ dominates the spread; that is a property of the test,
# not of the filter. The asserts read the shape from the edge bins (ranks 0 and $N_e$)
# relative to the mean count, check that the tuned filter is the flattest, and that the
# observation-space statistic is the weaker one.

# %%
edge = [(h[0] + h[-1]) / (2 * h.mean()) for h in truth_hist]
print("edge bins / mean, truth vs analysis:", np.round(edge, 2))
assert edge[1] > 1.3  # U: the truth is too often outside the ensemble
assert 0.7 < edge[2] < 1.3  # roughly flat
assert edge[3] < 0.5  # dome: too rarely outside
assert delta_truth[2] < min(delta_truth[1], delta_truth[3])  # tuned is the flattest
for hists in (truth_hist, obs_hist):  # every finite (t, i) entry is counted once
    assert sum(h.sum() for h in hists) == len(FACTORS) * (N_CYCLES - BURN_IN) * ssm.n_obs
assert delta_obs[1] < delta_truth[1] and delta_obs[3] < delta_truth[3]  # diluted by R
assert delta_obs[2] < 3  # tuned: flat in observation space as well

# %% [markdown]
# **A reference point.** If the truth really is one more member, i.e. drawn from the same
# distribution as the ensemble and independently across entries, the histogram is flat up to
# multinomial noise and $\chi^2 / (B - 1) \approx 1$. `rank_diagnostics` above also ranked
# such a synthetic truth among $N_e = 20$ standard-normal members:

# %%
print(f"exchangeable truth: chi2/(B-1) = {delta_ref:.2f}")
# chi2_20 / 20 has mean 1 and standard deviation sqrt(2/20) = 0.32: 2.5 is > 4 sigma
assert delta_ref < 2.5
