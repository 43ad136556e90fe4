# %% [markdown]
# # 7.C Reliability and sharpness: spread–skill, CRPS, DFS and ESS
#
# Four scores beyond the time-mean RMSE: whether the spread predicts the error cycle by
# cycle (7.5), a proper score for the whole predictive distribution (7.6), how much the
# observations actually informed the analysis (7.7), and how degenerate importance weights
# are (7.8). 7.5–7.6 use a Lorenz-63 twin experiment (Sakov et al. 2012: all three components
# observed every 0.25 time units with $R = 2I$) with an ETKF of $N_e = 10$ members.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import presets

jax.config.update("jax_enable_x64", True)

N_CYCLES = 1000  # docs size (DAPPER's KObs for this setup)
N_E = 10

ssm = presets.lorenz63_sakov2012()
twin = ssm.simulate(jax.random.key(0), N_CYCLES)
BURN_IN = ssm.burn_in_cycles
method = ff.EnsembleFilter(ff.ETKF(), rotate=True)  # no inflation needed at N_e = 10
out = ff.run(
    method,
    ssm,
    ssm.initial_ensemble(jax.random.key(1), N_E),
    twin.observations,
    twin.times,
    key=jax.random.key(2),
    save="ensembles",
)
after = slice(BURN_IN, None)
rmse_t = np.asarray(fxp.rmse(out.analysis_mean, twin.truth))[after]
spread_t = np.asarray(out.analysis_spread)[after]
print({k: round(float(v), 3) for k, v in out.scores(twin.truth, BURN_IN).items()})

# %% [markdown]
# ## 7.5 The spread–skill relationship
#
# A calibrated filter has $\sigma_t \approx \mathrm{RMSE}_t$ not only on average but
# *conditionally*: cycles with a large spread should be the cycles with a large error. The
# calibration scatter plots $\mathrm{RMSE}_t$ against $\sigma_t$; binning the cycles by spread
# and averaging the squared error in each bin gives the points that should lie on the
# diagonal. For a reliable ensemble $\mathbb E[\mathrm{RMSE}^2 \mid \sigma] =
# (1 + 1/N_e)\,\sigma^2$ (the ensemble mean is itself uncertain; Fortin et al. 2014), the
# dashed line.

# %%
N_BINS = 8
edges = np.quantile(spread_t, np.linspace(0, 1, N_BINS + 1))
which = np.clip(np.digitize(spread_t, edges[1:-1]), 0, N_BINS - 1)
bin_spread = np.array([np.sqrt(np.mean(spread_t[which == b] ** 2)) for b in range(N_BINS)])
bin_rmse = np.array([np.sqrt(np.mean(rmse_t[which == b] ** 2)) for b in range(N_BINS)])
ssr = float(fxp.spread_skill_ratio(spread_t, rmse_t, ensemble_size=N_E))
corr = float(np.corrcoef(spread_t, rmse_t)[0, 1])
print(f"spread-skill ratio (finite-N_e corrected) {ssr:.2f}; corr(spread, RMSE) {corr:.2f}")

fig, ax = plt.subplots(figsize=(5.5, 4.5), constrained_layout=True)
ax.loglog(spread_t, rmse_t, ".", ms=2, color="0.6", label="one cycle")
ax.loglog(bin_spread, bin_rmse, "o-", color="C0", label="binned by spread (RMS)")
s = np.array([spread_t.min(), spread_t.max()])
ax.loglog(s, s, "k-", lw=0.8, label=r"$\mathrm{RMSE} = \sigma$")
ax.loglog(s, s * np.sqrt(1 + 1 / N_E), "k--", lw=0.8, label=r"$\sqrt{1 + 1/N_e}\,\sigma$")
ax.set_xlabel(r"analysis spread $\sigma_t$")
ax.set_ylabel(r"analysis RMSE$_t$")
ax.set_title("spread–skill, ETKF on Lorenz-63")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Reading it: on average the filter is calibrated (ratio near 1), and larger spread does come
# with larger error, but the binned curve is flatter than the diagonal: the cycles where the
# 10-member ensemble claims the least uncertainty are over-confident, those where it claims
# the most are slightly over-dispersive. That is the typical picture of a small ensemble,
# whose spread fluctuates more than the error it should predict; the time-mean ratio alone
# would hide it.

# %%
assert 0.75 < ssr < 1.25  # calibrated on average
# the spread carries information about the error of each cycle: with ~940 cycles the
# standard error of a correlation is ~0.03, so 0.15 is far from "no relationship"
assert corr > 0.15
# the binned error grows with the binned spread (spread-skill relationship)
assert bin_rmse[-1] > 2 * bin_rmse[0]

# %% [markdown]
# ## 7.6 CRPS: calibration without Gaussianity
#
# The continuous ranked probability score of a predictive CDF $F$ for the outcome $y$,
#
# $$\mathrm{CRPS}(F, y) = \int_{-\infty}^{\infty} \big(F(z) - \mathbf 1\{y \le z\}\big)^2\,dz
# = \mathbb E|X - y| - \tfrac12\,\mathbb E|X - X'|,$$
#
# is a proper score for any distribution, in the units of the state. `fxp.crps_ensemble`
# evaluates it for the ensemble's empirical CDF (with `fair=True`, the unbiased
# $N_e(N_e - 1)$ normalisation of the spread term). For a **point** forecast (one member) it
# reduces to the absolute error, so ensemble and pointwise forecasts are scored on one scale.
# Three checks: the integral form, the closed form for a Gaussian,
# $\mathrm{CRPS}(\mathcal N(\mu, \sigma^2), y) = \sigma\big[z(2\Phi(z) - 1) + 2\varphi(z) -
# 1/\sqrt\pi\big]$ with $z = (y - \mu)/\sigma$, and the filter's ensemble against its own mean.


# %%
@jax.jit
def crps_by_quadrature(X, y):
    z = jnp.linspace(-8, 8, 160_001)
    F = jnp.mean(X[:, 0][None, :] <= z[:, None], axis=1)  # the ensemble's empirical CDF
    return jnp.sum((F - (y[0] <= z)) ** 2) * (z[1] - z[0])


X = jax.random.normal(jax.random.key(3), (N_E, 1))
y = jnp.array([0.4])
integral = crps_by_quadrature(X, y)
crps_kernel = float(fxp.crps_ensemble(X, y)[0])
print(f"integral form {float(integral):.5f}   kernel form {crps_kernel:.5f}")
assert abs(float(integral) - crps_kernel) < 1e-3  # quadrature step 1e-4

big = jax.random.normal(jax.random.key(4), (20_000, 1)) * 1.5 + 0.3
zg = (y - 0.3) / 1.5
gauss = 1.5 * (zg * (2 * stats.norm.cdf(zg) - 1) + 2 * stats.norm.pdf(zg) - 1 / np.sqrt(np.pi))
print(
    f"20000-member CRPS {float(fxp.crps_ensemble(big, y)[0]):.4f}  Gaussian {float(gauss[0]):.4f}"
)
assert abs(float(fxp.crps_ensemble(big, y)[0]) - float(gauss[0])) < 0.01  # Monte Carlo

crps_t = jax.vmap(fxp.crps_ensemble)(out.analyses[after], twin.truth[after]).mean(axis=1)
point_t = jax.vmap(fxp.crps_ensemble)(out.analysis_mean[after][:, None], twin.truth[after]).mean(1)
mae_t = jnp.mean(jnp.abs(out.analysis_mean[after] - twin.truth[after]), axis=1)
print(
    f"time-mean CRPS: ensemble {float(crps_t.mean()):.3f}, "
    f"ensemble mean {float(point_t.mean()):.3f}"
)
assert np.allclose(point_t, mae_t, rtol=1e-12)  # one member: CRPS = absolute error
assert float(crps_t.mean()) < 0.85 * float(point_t.mean())  # the spread earns its keep

# %% [markdown]
# "Without Gaussianity": a bimodal truth distribution (a mixture of $\mathcal N(\pm 2, 0.3^2)$)
# scored by an ensemble drawn from it and by a Gaussian with the same mean and variance. The
# Gaussian is penalised for putting mass between the modes; the ensemble needs no
# distributional assumption. The plot shows the two CDFs against one outcome.

# %%
k1, k2, k3 = jax.random.split(jax.random.key(5), 3)


def bimodal(key, n):
    ka, kb = jax.random.split(key)
    return jnp.where(jax.random.bernoulli(ka, 0.5, (n,)), 2.0, -2.0) + 0.3 * jax.random.normal(
        kb, (n,)
    )


members = bimodal(k1, 50)[:, None]
outcomes = bimodal(k2, 2000)
crps_mix = jax.vmap(lambda v: fxp.crps_ensemble(members, v[None])[0])(outcomes).mean()
sd = float(jnp.sqrt(4.0 + 0.09))
zs = np.asarray(outcomes) / sd
crps_gauss = np.mean(
    sd * (zs * (2 * stats.norm.cdf(zs) - 1) + 2 * stats.norm.pdf(zs) - 1 / np.sqrt(np.pi))
)
print(
    f"bimodal outcomes: ensemble CRPS {float(crps_mix):.3f}, "
    f"moment-matched Gaussian {crps_gauss:.3f}"
)
# the same 2000 outcomes score both forecasts: a paired comparison, 7% is well resolved
assert float(crps_mix) < 0.95 * crps_gauss

grid = np.linspace(-4, 4, 400)
fig, ax = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
ax.step(
    np.sort(members[:, 0]), np.arange(1, 51) / 50, where="post", color="C0", label="ensemble CDF"
)
ax.plot(grid, stats.norm.cdf(grid / sd), color="C1", label="moment-matched Gaussian CDF")
ax.axvline(2.1, color="k", ls=":", label="an outcome")
ax.set_xlabel("z")
ax.set_ylabel("F(z)")
ax.legend(fontsize=8)
ax.set_title("CRPS integrates the squared gap to the outcome's step")
plt.show()

# %% [markdown]
# ## 7.7 DFS: degrees of freedom for signal
#
# $$\mathrm{DFS} = \mathrm{tr}\big(I - P^a (P^f)^{-1}\big) = \mathrm{tr}(HK)
# = \mathrm{tr}(R^{-1} H P^a H^\top),$$
#
# the trace of the influence matrix $\partial (H\bar x^a)/\partial y$: how many independent
# pieces of information the observations contributed (0 to $\min(N_y, N_e - 1)$). Its
# diagonal splits it per observation: $(HK)_{ii} = (H P^a H^\top)_{ii} / R_{ii}$ for a
# diagonal $R$. One ETKF analysis with $N_x = 6$, $N_y = 4$ (observations of different
# accuracy, one of them of a variable the forecast already knows well), checked against the
# Kalman gain of the forecast's sample covariance:

# %%
rng = np.random.default_rng(0)
N_X, N_E7 = 6, 20
Hm = jnp.eye(N_X)[jnp.array([0, 1, 2, 5])]
r_var = np.array([0.1, 1.0, 10.0, 1.0])
scales = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.1])  # component 5 is already well known
Xf = jnp.asarray(rng.normal(size=(N_E7, N_X)) * scales)
y7 = jnp.asarray(rng.normal(size=4))


@jax.jit
def dfs_table(Xf, y, r):
    Xa = ff.ETKF().analysis(None, Xf, y, fxp.LinearObs(Hm), fxp.diagonal_noise(r)).particles
    Ya, Yf = Xa @ Hm.T, Xf @ Hm.T
    # per observation: the "analysis" identity on one column of H(X^a) and its R_ii
    per_obs = jax.vmap(lambda col, r_i: fxp.dfs(col[:, None], None, r_i))(Ya.T, r)
    return (
        fxp.dfs(Ya, Yf, r),
        fxp.dfs(None, Yf, r, method="forecast"),
        fxp.dfs(Ya, Yf, r, method="ratio"),
        per_obs,
    )


dfs_total, dfs_forecast, dfs_ratio, per_obs = map(np.asarray, dfs_table(Xf, y7, jnp.asarray(r_var)))
dfs_total, dfs_forecast, dfs_ratio = float(dfs_total), float(dfs_forecast), float(dfs_ratio)
Hn, P = np.asarray(Hm), np.cov(np.asarray(Xf), rowvar=False)  # the numpy reference
K = P @ Hn.T @ np.linalg.inv(Hn @ P @ Hn.T + np.diag(r_var))
HK = Hn @ K
print(
    f"DFS: analysis {dfs_total:.6f}, forecast {dfs_forecast:.6f}, "
    f"ratio {dfs_ratio:.6f}, tr(HK) {np.trace(HK):.6f}"
)
print(
    f"{'obs':>4s} {'variable':>8s} {'R_ii':>6s} {'(HP^fH^T)_ii':>13s} {'DFS_i':>7s} {'(HK)_ii':>8s}"
)
for i in range(4):
    print(
        f"{i:4d} {int(np.argmax(Hn[i])):8d} {r_var[i]:6.1f} {(Hn @ P @ Hn.T)[i, i]:13.3f} "
        f"{per_obs[i]:7.3f} {HK[i, i]:8.3f}"
    )

# %%
# exact identities of the ETKF's (Kalman-exact) analysis: float64 round-off
assert abs(dfs_total - np.trace(HK)) < 1e-10
assert abs(dfs_forecast - np.trace(HK)) < 1e-10 and abs(dfs_ratio - np.trace(HK)) < 1e-8
assert np.allclose(per_obs, np.diag(HK), atol=1e-10) and abs(per_obs.sum() - dfs_total) < 1e-10
assert per_obs[0] > per_obs[1] > per_obs[2]  # more accurate observations inform more
assert per_obs[3] < 0.1 * per_obs[1]  # same R, but the variable was already known

fig, ax = plt.subplots(figsize=(6, 3.2), constrained_layout=True)
ax.bar(np.arange(4), per_obs, color=["C0", "C1", "C2", "C3"])
ax.set_xticks(np.arange(4), [f"obs {i}\nR={r_var[i]}" for i in range(4)])
ax.set_ylabel("DFS contribution $(HK)_{ii}$")
ax.set_title(f"per-observation DFS (total {dfs_total:.2f} of {len(r_var)})")
plt.show()

# %% [markdown]
# ## 7.8 Effective sample size
#
# Importance weights $w^{(j)} \propto p(y \mid x^{(j)})$ of an ensemble drawn from the prior
# (the particle filter's weights, Part 10) are summarised by Kish's
#
# $$\mathrm{ESS} = \frac{\big(\sum_j w^{(j)}\big)^2}{\sum_j w^{(j)2}} \in [1, N_e],$$
#
# `fxp.effective_sample_size`, evaluated from log-weights with log-sum-exp so that
# likelihoods of $10^{-400}$ do not underflow. The usual **degeneracy threshold** resamples
# when $\mathrm{ESS} < N_e / 2$. With $N_y$ independent observations the log-weights' variance
# grows like $N_y$ and the ESS collapses (Bengtsson, Bickel & Li 2008; Snyder et al. 2008):
# the reason plain particle filters need $\exp(N_y)$ particles.

# %%
N_P = 1000
dims = np.array([1, 2, 5, 10, 20, 50, 100])


@jax.jit
def mean_ess(key, n_y):
    """Mean ESS over 20 trials, observing the first n_y of 100 components (a mask, not a
    slice, so every n_y runs in one compiled program)."""
    observed = jnp.arange(100)[None, :] < n_y

    def one(k):
        kx, ky = jax.random.split(k)
        x = jax.random.normal(kx, (N_P, 100))  # prior draws
        y_obs = jax.random.normal(ky, (100,)) * np.sqrt(2.0)  # truth + noise, R = I
        return fxp.effective_sample_size(
            -0.5 * jnp.sum(jnp.where(observed, (y_obs - x) ** 2, 0), 1)
        )

    return jax.vmap(one)(jax.random.split(key, 20)).mean()


ess = np.asarray(jax.vmap(mean_ess, in_axes=(None, 0))(jax.random.key(6), jnp.asarray(dims)))
for n, e in zip(dims, ess, strict=True):
    print(f"N_y = {n:3d}: mean ESS {e:7.1f} of {N_P}")

w = jnp.array([-1000.0, -1000.0, -3000.0])
assert float(fxp.effective_sample_size(w)) == 2.0  # log domain: no underflow at 1e-434
lw = jax.random.normal(jax.random.key(7), (N_P,))
wn = np.exp(np.asarray(lw))
assert np.isclose(float(fxp.effective_sample_size(lw)), wn.sum() ** 2 / (wn**2).sum(), rtol=1e-12)
assert np.isclose(float(fxp.effective_sample_size(jnp.zeros(N_P))), N_P, rtol=1e-12)
assert np.all(np.diff(ess) < 0) and ess[0] > N_P / 2 and ess[-1] < 5  # collapse with N_y

fig, ax = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
ax.loglog(dims, ess, "o-", color="C0", label="mean ESS (20 trials)")
ax.axhline(N_P / 2, color="C3", ls="--", label="resampling threshold $N/2$")
ax.axhline(1, color="0.5", ls=":")
ax.set_xlabel("number of observations $N_y$")
ax.set_ylabel("effective sample size")
ax.set_title(f"weight degeneracy, {N_P} prior particles")
ax.legend(fontsize=8)
plt.show()
