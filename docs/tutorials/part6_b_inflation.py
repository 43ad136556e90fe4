# %% [markdown]
# # 6.B Why inflation: filter divergence and the three anomaly inflators
#
# An ensemble filter with a finite ensemble under-estimates its own error: sampling error
# and unrepresented model error make the forecast spread too small, the analysis then trusts
# the forecast too much, the spread shrinks further, and the observations are eventually
# ignored. This page shows that feedback loop on the Lorenz-96 twin experiment and measures
# how multiplicative inflation, RTPS and RTPP stop it, as a calibration table.
#
# **The experiment.** Lorenz-96 ($N_x = 40$, $F = 8$, every $\Delta t = 0.05$, $R = I$;
# Sakov & Oke 2008), the ETKF with $N_e = 20$, in two observing regimes: every component
# observed, and only the even components (the odd entries of each observation vector are
# NaN, which every filterax filter treats as "not observed" without changing shapes). All
# 36 runs of the page — 3 inflators × 6 settings × 2 regimes — are ONE compiled program,
# `jax.vmap` over the inflation parameters and the observation arrays.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import presets

jax.config.update("jax_enable_x64", True)

N_CYCLES = 400  # docs size: DAPPER's published runs are longer, the ranking is already stable
BURN_IN = 100
N_E = 20

ssm = presets.lorenz96_sakov2008()
twin = ssm.simulate(jax.random.key(0), N_CYCLES)
ens0 = ssm.initial_ensemble(jax.random.key(1), N_E)
full_obs = twin.observations
half_obs = full_obs.at[:, 1::2].set(jnp.nan)  # odd components never observed

# One inflator with three parameters covers all three schemes: RTPP(alpha_p), then
# RTPS(alpha_s), then multiplicative lambda. alpha = 0 and lambda = 1 are the identity, so
# each row of the grid below switches on exactly one scheme.
GRID = {
    "multiplicative": ("$\\lambda$", [1.0, 1.02, 1.04, 1.06, 1.08, 1.12]),
    "RTPS": ("$\\alpha$", [0.1, 0.3, 0.5, 0.7, 0.9, 1.0]),
    "RTPP": ("$\\alpha$", [0.1, 0.3, 0.5, 0.7, 0.8, 0.9]),
}
rows = []
for scheme, (_, values) in GRID.items():
    for v in values:
        rows.append(
            {
                "multiplicative": (v, 0.0, 0.0),
                "RTPS": (1.0, v, 0.0),
                "RTPP": (1.0, 0.0, v),
            }[scheme]
        )
params = jnp.asarray(rows)  # (18, 3): lambda, alpha_rtps, alpha_rtpp


def inflator(p):
    lam, alpha_s, alpha_p = p

    def inflate(analysis, forecast, *, key=None):
        analysis = fxp.inflate_rtpp(analysis, forecast, alpha_p)
        analysis = fxp.inflate_rtps(analysis, forecast, alpha_s)
        return fxp.inflate_multiplicative(analysis, lam)

    return inflate


@jax.jit
def calibrate(params, observations):
    def one(p, obs):
        out = ff.run(
            ff.EnsembleFilter(ff.ETKF(), inflator=inflator(p)),
            ssm,
            ens0,
            obs,
            twin.times,
            key=jax.random.key(2),
            throw=False,  # a diverged setting is a result here, not an error
        )
        return out.analysis_mean, out.forecast_mean, out.analysis_spread, out.status

    regime = jax.vmap(one, in_axes=(0, None))
    return regime(params, observations[0]), regime(params, observations[1])


(full, half) = calibrate(params, jnp.stack([full_obs, half_obs]))
truth = np.asarray(twin.truth)


def scores(result):
    mean_a, _, spread_a, status = (np.asarray(r) for r in result)
    err = np.sqrt(np.mean((mean_a - truth[None]) ** 2, axis=2))  # (18, T)
    ok = status == 0  # a run that blew up (status NONFINITE) scores inf, not NaN
    rmse = np.where(ok, np.nan_to_num(err[:, BURN_IN:].mean(1), nan=np.inf), np.inf)
    return err, spread_a, rmse, spread_a[:, BURN_IN:].mean(1), status


err_full, spr_full, rmse_full, spread_full, status_full = scores(full)
err_half, spr_half, rmse_half, spread_half, status_half = scores(half)
print(
    "runs that blew up (non-finite ensemble):",
    int(np.sum(status_full != 0)),
    "all observed,",
    int(np.sum(status_half != 0)),
    "half observed",
)
t = np.asarray(twin.times)

# %% [markdown]
# ## 6.3 Filter divergence: an overconfident analysis rejects the observations
#
# With the forecast covariance $P^f$ estimated from the ensemble, the Kalman gain
#
# $$K = P^f H^\top (H P^f H^\top + R)^{-1} \xrightarrow[\;P^f \to 0\;]{} 0,$$
#
# so when the spread collapses the analysis keeps the forecast and the observations are
# rejected; the estimate then drifts away from the truth on the chaotic attractor while the
# filter reports a small error. The recovery is to inflate the forecast (or analysis)
# covariance, multiplicatively ($P \leftarrow \lambda P$, $\lambda > 1$) or additively
# ($P \leftarrow P + Q_{\text{add}}$).
#
# The two runs below are rows of the grid: the ETKF with $\lambda = 1$ (no inflation) and
# with $\lambda = 1.04$, with half the components observed. The third panel measures the
# rejection directly: the share of the innovation that the analysis absorbs,
# $\lVert \bar x^a - \bar x^f\rVert / \lVert y - H \bar x^f\rVert$ over the observed
# components.

# %%
no_infl, with_infl = 0, 2  # rows: lambda = 1.0 and lambda = 1.04
obs_np = np.asarray(half_obs)
observed = ~np.isnan(obs_np[0])


def absorbed(row):
    mean_a, mean_f = np.asarray(half[0][row]), np.asarray(half[1][row])
    increment = np.linalg.norm((mean_a - mean_f)[:, observed], axis=1)
    innovation = np.linalg.norm((obs_np - mean_f)[:, observed], axis=1)
    return increment / innovation


late = slice(N_CYCLES - 150, N_CYCLES)
fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True, constrained_layout=True)
axes[0].plot(t[late], truth[late, 1], "k-", lw=1.5, label="truth $x_1$ (unobserved)")
for row, color, label in ((no_infl, "C3", "no inflation"), (with_infl, "C0", "$\\lambda$ = 1.04")):
    axes[0].plot(t[late], np.asarray(half[0][row])[late, 1], color=color, lw=1, label=label)
    axes[1].semilogy(t, err_half[row], color=color, lw=0.8, label=f"rmse.a, {label}")
    axes[1].semilogy(t, spr_half[row], color=color, lw=0.8, ls="--", label=f"spread.a, {label}")
    axes[2].plot(t, absorbed(row), color=color, lw=0.6, label=label)
axes[0].set_ylabel("$x_1$")
axes[0].legend(fontsize=8, ncols=3)
axes[1].set_ylabel("rmse / spread")
axes[1].legend(fontsize=8, ncols=2)
axes[2].set_ylabel("share of innovation absorbed")
axes[2].set_xlabel("time")
axes[2].legend(fontsize=8)
plt.show()

ratio_no = spread_half[no_infl] / rmse_half[no_infl]
print(f"no inflation:   rmse.a {rmse_half[no_infl]:.2f}  spread.a {spread_half[no_infl]:.3f}")
print(f"lambda = 1.04:  rmse.a {rmse_half[with_infl]:.2f}  spread.a {spread_half[with_infl]:.3f}")
print(
    "share of innovation absorbed (after burn-in):",
    f"{absorbed(no_infl)[BURN_IN:].mean():.3f} without,",
    f"{absorbed(with_infl)[BURN_IN:].mean():.3f} with",
)

# %% [markdown]
# The uninflated filter diverges: its error is of the size of the climatological spread
# (about 3.6) while its own spread claims an error ten times smaller, and it takes a far
# smaller share of each innovation than the inflated one. The page checks all three:

# %%
assert rmse_half[no_infl] > 2.0  # diverged: error near climatology
assert ratio_no < 0.2, ratio_no  # and overconfident about it
assert rmse_half[with_infl] < 0.5 * rmse_half[no_infl]  # inflation recovers the filter
assert absorbed(no_infl)[BURN_IN:].mean() < 0.7 * absorbed(with_infl)[BURN_IN:].mean()

# %% [markdown]
# ## 6.4 Multiplicative vs RTPS vs RTPP: when each wins
#
# All three act on the analysis anomalies $X'^a$ (forecast anomalies $X'^f$, per-component
# spreads $\sigma^a$, $\sigma^f$):
#
# $$\text{multiplicative:}\ X'^a \leftarrow \lambda X'^a,\qquad
# \text{RTPS:}\ X'^a \leftarrow X'^a\Big(1 + \alpha\,\frac{\sigma^f - \sigma^a}{\sigma^a}\Big),
# \qquad \text{RTPP:}\ X'^a \leftarrow (1 - \alpha) X'^a + \alpha X'^f .$$
#
# Multiplicative inflation scales every component alike, observed or not; relaxation
# (Zhang et al. 2004; Whitaker & Hamill 2012) inflates where the observations reduced the
# spread, and leaves unobserved components alone. The calibration table gives, for each
# scheme and regime, the best time-mean analysis RMSE over its 6 settings, the setting that
# reached it, the spread-to-error ratio there (1 is a calibrated ensemble), and how many of
# the 6 settings stay within 10 % of that scheme's best (how forgiving the tuning is), and how
# many blew up.

# %%
names = list(GRID)
table = []
for k, name in enumerate(names):
    sl = slice(6 * k, 6 * k + 6)
    values = GRID[name][1]
    for regime, rmse, spread in (
        ("all observed", rmse_full, spread_full),
        ("half observed", rmse_half, spread_half),
    ):
        r, s = rmse[sl], spread[sl]
        best = int(np.argmin(r))
        n_ok, n_failed = int(np.sum(r < 1.1 * r[best])), int(np.sum(~np.isfinite(r)))
        table.append((name, regime, r[best], values[best], s[best] / r[best], n_ok, n_failed))

print(
    f"{'scheme':15s} {'regime':14s} {'best rmse.a':>11s} {'at':>6s}",
    f"{'spread/rmse':>11s} {'#within 10%':>11s} {'#blew up':>8s}",
)
for name, regime, r, v, ratio, n_ok, n_failed in table:
    print(f"{name:15s} {regime:14s} {r:11.3f} {v:6.2f} {ratio:11.2f} {n_ok:11d} {n_failed:8d}")

# %% [markdown]
# The spread-trajectory comparison, at each scheme's best setting in the half-observed
# regime, and the tuning curves of the three schemes in both regimes:

# %%
colors = {"multiplicative": "C0", "RTPS": "C1", "RTPP": "C2"}
fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
for k, name in enumerate(names):
    sl = slice(6 * k, 6 * k + 6)
    best = 6 * k + int(np.argmin(rmse_half[sl]))
    ax0.plot(t, spr_half[best], color=colors[name], lw=0.8, label=f"{name} spread.a")
    ax0.plot(t, err_half[best], color=colors[name], lw=0.5, ls=":", alpha=0.8)
    x = np.arange(6)
    ax1.plot(x, rmse_full[sl], "o-", color=colors[name], label=name)
    ax2.plot(x, rmse_half[sl], "o-", color=colors[name], label=name)
ax0.set_yscale("log")
ax0.set_xlabel("time")
ax0.set_ylabel("spread.a (solid), rmse.a (dotted)")
ax0.set_title("half observed, best setting")
ax0.legend(fontsize=8)
for ax, title in ((ax1, "all observed"), (ax2, "half observed")):
    ax.set_yscale("log")
    ax.set_xticks(range(6), ["1", "2", "3", "4", "5", "6"])
    ax.set_xlabel("setting index (values in the table's grid, increasing)")
    ax.set_ylabel("time-mean rmse.a")
    ax.set_title(title)
    ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **What the numbers say** (and the page asserts, so a change of behaviour breaks the build):
#
# - With every component observed, all three schemes, tuned, reach the published level of
#   the ETKF on this benchmark (0.20 for $N_e = 20$; the leaderboard's `quick` suite row
#   "L96 sakov2008 ETKF-20"), within the scatter of a 400-cycle run.
# - With half the components observed the task is harder for every scheme (best scores
#   0.33–0.40) and the schemes separate: tuned multiplicative inflation is best, RTPS is
#   close behind, RTPP is clearly behind. Relaxation only inflates where the analysis
#   reduced the spread, so the unobserved components get nothing from it directly.
# - The tuning windows narrow in the sparse regime ("#within 10 %"), and the failure modes
#   show: multiplicative with $\lambda$ too small diverges (6.3); RTPP with small $\alpha$
#   under-inflates ($\alpha = 0.1$: rmse ≈ 3, diverged); RTPS and RTPP near
#   $\alpha = 1$ keep the forecast spread on the observed components, and the runs blow up
#   (non-finite ensembles, status NONFINITE, "#blew up").
# - Rule of thumb backed by this table: multiplicative $\lambda \approx 1.02$–$1.06$ is the
#   safe default for a global filter; RTPS $\alpha \approx 0.3$–$0.5$ matches it where the
#   spread collapse follows the observations (and is the usual choice with localisation);
#   RTPP needs the most tuning here.
# - Tolerances: the all-observed bound 0.3 is the 0.20 published score plus the scatter of
#   a short run (a diverging or uninflated filter scores > 0.5); the regime comparison uses
#   margins of 10 % or more, larger than the seed-to-seed scatter of 400-cycle means.

# %%
best = {(n, reg): r for n, reg, r, *_ in table}
for name in names:
    assert best[(name, "all observed")] < 0.3, (name, best[(name, "all observed")])
assert best[("multiplicative", "half observed")] < 0.9 * best[("RTPP", "half observed")]
assert best[("multiplicative", "half observed")] < 1.1 * best[("RTPS", "half observed")]
assert np.sum(status_half != 0) >= 1  # relaxation near alpha = 1 blows up when half observed
assert np.all(status_full[:6] == 0) and np.all(status_half[:6] == 0)  # multiplicative never does
