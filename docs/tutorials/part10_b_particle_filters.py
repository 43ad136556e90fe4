# %% [markdown]
# # 10.B Particle filters
#
# A particle filter represents the filtering distribution by *weighted* samples,
# $p(x_t \mid y_{1:t}) \approx \sum_{i=1}^N W_t^i\,\delta(x_t - x_t^i)$, and makes no Gaussian
# assumption anywhere: it is exact as $N \to \infty$ for any dynamics and any likelihood.
# The price is the weights. This page builds the bootstrap filter from one importance-sampling
# step (10.3), watches its weights degenerate, and then changes the proposal (10.4) to keep
# them alive:
#
# 1. importance sampling on one 1-d linear-Gaussian step and the four resamplers of
#    `filterax.learn` (unbiased counts, and their variances);
# 2. `BootstrapPF` on a 2-d linear-Gaussian twin against the exact `KalmanFilter`: filtering
#    mean and log-evidence converge as $N$ grows;
# 3. degeneracy: the effective sample size over cycles without and with resampling, with
#    informative observations, and its collapse as the state dimension grows;
# 4. `AuxiliaryPF` and `OptimalProposalPF` against the bootstrap filter when the observations
#    are precise;
# 5. a nonlinear, non-Gaussian problem — Lorenz-63 observed through the sign-blind $x_1^2$ —
#    where a particle filter beats the EnKF;
# 6. what `run` reports when a particle filter fails.
#
# Every filter here is a cycled method run by `filterax.filters.run`: one compiled
# `lax.scan` over the observation times, per-cycle diagnostics (the ESS and whether the cycle
# resampled) in `RunResult.diagnostics`, and the log-evidence estimate
# $\log\hat p(y_{1:T}) = \sum_t \log\hat p(y_t\mid y_{<t})$ in `RunResult.log_likelihood`.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.filters as ff
import filterax.learn as fl
import filterax.primitives as fxp
from filterax.zoo import presets

jax.config.update("jax_enable_x64", True)  # the page compares with exact Kalman references

# %% [markdown]
# ## 10.3 Importance sampling, one step
#
# Prior $x \sim N(0, 1)$, observation $y = x + \eta$, $\eta \sim N(0, R)$ with $R = 0.25$ and
# $y = 1.2$. The posterior is $N(0.96, 0.2)$. Drawing $x^i$ from the prior (the *bootstrap*
# proposal: proposal = prior) and weighting each by its likelihood,
#
# $$w^i = g(y \mid x^i) = N(y;\ x^i, R),\qquad W^i = \frac{w^i}{\sum_j w^j},\qquad
# \mathbb E[f(x)\mid y] \approx \sum_i W^i f(x^i),$$
#
# is self-normalised importance sampling. How many of the $N$ draws really count is the
# *effective sample size*
#
# $$N_\text{eff} = \frac{\big(\sum_i w^i\big)^2}{\sum_i (w^i)^2} = \frac1{\sum_i (W^i)^2}
# \in [1, N],$$
#
# `effective_sample_size` (computed from log-weights, in log space). The Monte Carlo error of
# the weighted mean is about $\sqrt{\operatorname{Var}(x\mid y)/N_\text{eff}}$.

# %%
N_IS, R1, Y1 = 200, 0.25, 1.2
post_var = 1.0 / (1.0 + 1.0 / R1)
post_mean = post_var * Y1 / R1  # 0.96
x_is = jax.random.normal(jax.random.key(0), (N_IS,))
lw_is = -0.5 * (Y1 - x_is) ** 2 / R1  # log-likelihood up to a constant: W does not care
W_is = jnp.exp(fl.normalise_log_weights(lw_is))
ess_is = float(fl.effective_sample_size(lw_is))
is_mean = float(W_is @ x_is)
mc_se = np.sqrt(post_var / ess_is)
print(f"N = {N_IS}: ESS = {ess_is:.1f}; IS mean {is_mean:.3f} vs exact {post_mean:.3f}")
print(f"  (Monte Carlo standard error ~ sqrt(Var/ESS) = {mc_se:.3f})")
# For large N, ESS/N -> E[w]^2 / E[w^2] = sqrt(R (R+2))/(R+1) exp(-y^2/((R+1)(R+2))) = 0.36
# here (Gaussian integrals); [0.25, 0.5] leaves room for the sampling error at N = 200. The IS
# mean sits within 4 standard errors of the exact mean (a 4-sigma bound).
ess_theory = np.sqrt(R1 * (R1 + 2)) / (R1 + 1) * np.exp(-(Y1**2) / ((R1 + 1) * (R1 + 2)))
print(f"  large-N theory: ESS/N = {ess_theory:.3f}")
assert 0.25 * N_IS < ess_is < 0.5 * N_IS
assert abs(is_mean - post_mean) < 4 * mc_se
assert jnp.isclose(W_is.sum(), 1.0, atol=1e-12)

fig, ax = plt.subplots(figsize=(7, 3.4), constrained_layout=True)
grid = np.linspace(-3.5, 3.5, 300)
ax.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), "k:", label="prior N(0, 1)")
ax.plot(
    grid,
    np.exp(-0.5 * (grid - post_mean) ** 2 / post_var) / np.sqrt(2 * np.pi * post_var),
    "C3",
    label="exact posterior",
)
ax.vlines(np.asarray(x_is), 0, np.asarray(W_is) * N_IS * 0.25, color="C0", alpha=0.6, lw=1)
ax.plot([], [], "C0", label=r"particles $x^i$, height $\propto W^i$")
ax.axvline(Y1, color="C2", ls="--", label="observation y")
ax.set_xlabel("x")
ax.legend(fontsize=8)
ax.set_title(f"one importance-sampling step: N = {N_IS}, ESS = {ess_is:.0f}")

# %% [markdown]
# **Resampling** replaces the weighted sample by an equally weighted one: particle $j$ is
# copied $O_j$ times with $\mathbb E[O_j] = N W^j$, so low-weight particles die and
# high-weight ones multiply. The four schemes of `filterax.learn` (Douc, Cappé & Moulines
# 2005) invert the weights' CDF at different uniforms — `multinomial_resample` ($N$
# independent uniforms), `stratified_resample` (one per stratum $[i/N, (i+1)/N)$),
# `systematic_resample` (one shared offset) and `residual_resample` ($\lfloor N W^j\rfloor$
# deterministic copies, the rest multinomial). All four are unbiased; they differ in the
# *variance* of the counts, which is noise the filter adds for nothing. Below: 4000 draws of
# each on the weights above.

# %%
RESAMPLERS = {
    "multinomial": fl.multinomial_resample,
    "stratified": fl.stratified_resample,
    "systematic": fl.systematic_resample,
    "residual": fl.residual_resample,
}
N_REP = 4000
rep_keys = jax.random.split(jax.random.key(1), N_REP)
expected = N_IS * W_is
count_var = {}
for name, resample in RESAMPLERS.items():

    @jax.jit
    def counts(keys, resample=resample):
        a = jax.vmap(lambda k: resample(k, lw_is, N_IS))(keys)
        return jax.vmap(lambda ai: jnp.bincount(ai, length=N_IS))(a)

    c = np.asarray(counts(rep_keys), dtype=float)  # (N_REP, N)
    mean_c, var_c = c.mean(0), c.var(0)
    # Unbiasedness, particle by particle: |mean count - N W_j| within 5 standard errors of the
    # mean of 4000 draws (200 comparisons per scheme: a 5-sigma bound is not hit by chance).
    # The standard error uses max(sample variance, f (1 - f)), f the fractional part of N W_j:
    # an integer count with mean N W_j has at least that variance, and a rarely copied
    # particle (N W_j = 1e-4) may show no copies, hence zero sample variance, in 4000 draws.
    frac = np.asarray(expected) % 1.0
    se = np.sqrt(np.maximum(var_c, frac * (1 - frac)) / N_REP)
    assert np.all(np.abs(mean_c - np.asarray(expected)) <= 5 * se), name
    count_var[name] = var_c.sum()
    print(f"{name:12s} max |E[O_j] - N W_j| = {np.abs(mean_c - expected).max():.3f};"
          f"  sum_j Var(O_j) = {count_var[name]:.1f}")  # fmt: skip

theory = N_IS * (1.0 - float(jnp.sum(W_is**2)))  # multinomial: sum_j N W_j (1 - W_j)
print(f"multinomial theory N (1 - sum W^2) = {theory:.1f}")
# the sampled multinomial variance is within 5% of the formula (4000 draws: its relative
# standard error is ~1.5%); the three low-variance schemes are each at most half of it
assert abs(count_var["multinomial"] / theory - 1) < 0.05
for name in ("stratified", "systematic", "residual"):
    assert count_var[name] < 0.5 * count_var["multinomial"], name

fig, ax = plt.subplots(figsize=(6, 3), constrained_layout=True)
ax.bar(list(count_var), list(count_var.values()), color=["C0", "C1", "C2", "C4"])
ax.axhline(theory, color="k", ls=":", label="multinomial theory")
ax.set_ylabel(r"$\sum_j \mathrm{Var}(O_j)$")
ax.set_title(f"resampling noise, N = {N_IS} (4000 draws each)")
ax.legend(fontsize=8)

# %% [markdown]
# ## 10.3 The bootstrap particle filter against the Kalman filter
#
# Cycling the step gives the bootstrap filter (Gordon, Salmond & Smith 1993), `BootstrapPF`:
# propagate every particle through the model *with its noise* (the proposal is the prior
# $p(x_t\mid x_{t-1})$), multiply the weights by the likelihood $g(y_t\mid x_t^i)$, resample
# when $N_\text{eff} < 0.5N$ (`ess_threshold`, with `systematic_resample` by default). The
# average incremental weight estimates $p(y_t\mid y_{<t})$; the product of the increments is
# an *unbiased* estimate of the evidence $p(y_{1:T})$ (its logarithm is biased low by about
# half its variance).
#
# The test bed is a linear-Gaussian twin, where the Kalman filter is exact: a damped rotation
# in 2-d, $x_t = A x_{t-1} + \xi_t$ with $Q = 0.3I$, only $x_1$ observed with $R = 0.5$, 40
# cycles, prior $N(0, I)$. Eight seeds per ensemble size $N \in \{50, 200, 800, 3200\}$, one
# vmapped program each.

# %%
A2 = jnp.array([[0.9, 0.3], [-0.3, 0.9]])
Q2, R2, T2, N_SEEDS = 0.3, 0.5, 40, 8
lin = fxp.Model(lambda x, t0, t1: A2 @ x, jnp.array([[1.0, 0.0]]), R2, process_noise=Q2)
times2 = jnp.arange(1.0, T2 + 1.0)


def linear_twin(key, model, n_x, q, r, n_cycles):
    """Truth and observations of x_t = A x + N(0, qI), y = H x + N(0, rI), x_0 ~ N(0, I)."""
    h = model.obs_op
    k0, kq, kr = jax.random.split(key, 3)

    def step(x, ks):
        x = model.dynamics(x, 0.0, 1.0) + jnp.sqrt(q) * jax.random.normal(ks[0], (n_x,))
        y = h @ x + jnp.sqrt(r) * jax.random.normal(ks[1], (h.shape[0],))
        return x, (x, y)

    ks = jnp.stack([jax.random.split(kq, n_cycles), jax.random.split(kr, n_cycles)], 1)
    _, (truth, obs) = jax.lax.scan(step, jax.random.normal(k0, (n_x,)), ks)
    return truth, obs


truth2, obs2 = linear_twin(jax.random.key(2), lin, 2, Q2, R2, T2)
prior2 = ff.GaussianState(jnp.zeros(2), jnp.eye(2))
kf = ff.run(ff.KalmanFilter(), lin, prior2, obs2, times2, key=jax.random.key(0))
kf_logz = float(kf.log_likelihood.sum())
print(f"Kalman filter: log p(y_1:{T2}) = {kf_logz:.3f}")


def pf_runs(method, model, obs, times, n, n_seeds, save="stats"):
    """`method` on `n_seeds` independent prior ensembles of size n, one vmapped program."""

    @jax.jit
    @jax.vmap
    def one(seed):
        x0 = jax.random.normal(jax.random.fold_in(jax.random.key(seed), 0), (n, 2))
        return ff.run(method, model, x0, obs, times, key=jax.random.key(seed), save=save)

    return one(jnp.arange(n_seeds) + 100)


N_GRID = (50, 200, 800, 3200)
mean_err, logz_err, logz_sd, runs2 = [], [], [], {}
for n in N_GRID:
    out = pf_runs(fl.BootstrapPF(), lin, obs2, times2, n, N_SEEDS)
    assert jnp.all(out.status == 0)
    runs2[n] = out
    mean_err.append(float(jnp.sqrt(jnp.mean((out.analysis_mean - kf.analysis_mean) ** 2))))
    logz = out.log_likelihood.sum(1)
    logz_err.append(float(jnp.mean(logz) - kf_logz))
    logz_sd.append(float(jnp.std(logz)))
    print(f"N = {n:5d}: RMS |PF mean - KF mean| = {mean_err[-1]:.4f};  log-evidence "
          f"error {logz_err[-1]:+.3f} (seed sd {logz_sd[-1]:.3f})")  # fmt: skip

# Monte Carlo error ~ N^{-1/2}: a 64x larger N should cut the mean error ~8x; assert a
# monotone decrease and at least 4x over the grid (8 seeds: the ratio is known to ~25%)
assert all(a > b for a, b in zip(mean_err, mean_err[1:]))
assert mean_err[0] / mean_err[-1] > 4
# at N = 3200 the PF mean is within 0.05 of the KF mean (the posterior sd of x_1 is ~0.6)
# and the log-evidence within 3 standard errors of the seed mean (+0.05 for the downward
# bias -Var/2 of a log of an unbiased estimate) of the exact value
assert mean_err[-1] < 0.05
assert abs(logz_err[-1]) < 3 * logz_sd[-1] / np.sqrt(N_SEEDS) + 0.05

fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True)
ax = axes[0]
ax.plot(times2, truth2[:, 1], "k", lw=1, label="truth $x_2$ (unobserved)")
ax.plot(times2, kf.analysis_mean[:, 1], "C3", label="Kalman filter")
ax.plot(times2, runs2[50].analysis_mean[0, :, 1], "C0--", label="bootstrap PF, N = 50")
ax.plot(times2, runs2[3200].analysis_mean[0, :, 1], "C2:", lw=2, label="bootstrap PF, N = 3200")
ax.set_xlabel("cycle")
ax.legend(fontsize=8)
ax.set_title("filtering mean of the unobserved component")
ax = axes[1]
ax.loglog(N_GRID, mean_err, "o-", label="RMS |PF mean - KF mean|")
ax.loglog(N_GRID, np.abs(logz_err), "s-", label="|mean log-evidence error|")
ax.loglog(N_GRID, logz_sd, "^-", label="sd of log-evidence over seeds")
ref = mean_err[0] * np.sqrt(N_GRID[0] / np.asarray(N_GRID))
ax.loglog(N_GRID, ref, "k:", label=r"$\propto N^{-1/2}$")
ax.set_xlabel("N particles")
ax.legend(fontsize=8)
ax.set_title("convergence to the Kalman filter (8 seeds)")

# %% [markdown]
# ## 10.3 Degeneracy and the effective sample size
#
# Without resampling (sequential importance sampling), the weights multiply cycle after
# cycle and the ESS decays towards 1: one particle ends up holding all the weight. Resampling
# resets the weights but not the loss of diversity it papers over, so the ESS *within* a
# cycle — how well the prior particles cover the likelihood — is what a filter designer
# watches. `RunResult.diagnostics` holds it per cycle (`ParticleDiagnostics.ess`, the ESS the
# resampling rule saw, and `.resampled`). Three rules on the twin above, $N = 500$:
# never resample (`ess_threshold=0`), resample when $N_\text{eff} < N/2$ (the default), and
# every cycle (`ess_threshold=1`, DAPPER's default); then the every-cycle filter with a much
# more informative observation, $R = 0.01$.

# %%
N3 = 500
rules = {"never (SIS)": 0.0, "ESS < N/2": 0.5, "every cycle": 1.0}
ess3 = {}
for label, threshold in rules.items():
    out = pf_runs(fl.BootstrapPF(ess_threshold=threshold), lin, obs2, times2, N3, 1)
    ess3[label] = np.asarray(out.diagnostics.ess[0])
    n_rs = int(out.diagnostics.resampled[0].sum())
    print(f"{label:12s} mean ESS {ess3[label].mean():6.1f}, final {ess3[label][-1]:6.1f},"
          f" resampled {n_rs:2d}/{T2} cycles")  # fmt: skip
    if threshold == 0.5:
        # the rule fires exactly on the cycles whose ESS fell below N/2
        assert np.array_equal(
            np.asarray(out.diagnostics.resampled[0]), ess3[label] < 0.5 * N3
        )
lin_precise = fxp.Model(lin.dynamics, lin.obs_op, 0.01, process_noise=Q2)
_, obs_precise = linear_twin(jax.random.key(2), lin_precise, 2, Q2, 0.01, T2)
out = pf_runs(fl.BootstrapPF(ess_threshold=1.0), lin_precise, obs_precise, times2, N3, 1)
ess3["every cycle, R = 0.01"] = np.asarray(out.diagnostics.ess[0])
print(f"every cycle with R = 0.01: mean ESS {ess3['every cycle, R = 0.01'].mean():.1f}")

# SIS: after 40 cycles the weights have collapsed onto a handful of particles (< 2% of N);
# resampling every cycle keeps the per-cycle ESS near its one-step value (> 40% of N with
# R = 0.5); a 50x more precise observation cuts it below 15% (one-step theory for a
# likelihood of sd 0.1 against a forecast spread of ~0.7: ~ 0.1/0.7 * sqrt(2) ~ 0.2 at best)
assert ess3["never (SIS)"][-1] < 0.02 * N3
assert ess3["every cycle"].mean() > 0.4 * N3
assert ess3["every cycle, R = 0.01"].mean() < 0.15 * N3

fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True)
ax = axes[0]
for label, ess in ess3.items():
    ax.semilogy(times2, ess / N3, label=label)
ax.axhline(0.5, color="k", ls=":", lw=0.8)
ax.set_xlabel("cycle")
ax.set_ylabel(r"$N_\mathrm{eff} / N$")
ax.set_title(f"bootstrap PF, N = {N3}")
ax.legend(fontsize=8)

# %% [markdown]
# **The curse of dimensionality.** The same one-step importance sampling as in the first
# section, now in $N_x$ dimensions: prior $N(0, I)$, every component observed with $R = I$,
# $N = 1000$ particles, 20 repetitions per $N_x$. The log-weights are sums of $N_x$
# independent terms, so their spread grows like $\sqrt{N_x}$ and the largest weight takes
# over: keeping the ESS fixed needs $N$ to grow *exponentially* in the number of observed
# degrees of freedom (Snyder, Bengtsson, Bickel & Anderson 2008). This — not the cost of a
# particle — is why a plain particle filter does not scale to weather models, and why Part 2's
# Gaussian filters, or localised and proposal-based particle filters, exist.

# %%
N_CURSE, REPS = 1000, 20
dims = (1, 2, 4, 8, 16, 32, 64)


@jax.jit
def one_step_ess(key, n_x_dummy):
    """ESS and max weight of bootstrap IS with N(0, I) prior, identity obs, R = I."""
    n_x = n_x_dummy.shape[0]
    k_t, k_y, k_p = jax.random.split(key, 3)
    truth = jax.random.normal(k_t, (n_x,))
    y = truth + jax.random.normal(k_y, (n_x,))
    x = jax.random.normal(k_p, (N_CURSE, n_x))
    lw = -0.5 * jnp.sum((y - x) ** 2, axis=1)
    return fl.effective_sample_size(lw), jnp.exp(jnp.max(fl.normalise_log_weights(lw)))


curse_ess, curse_wmax = [], []
for d in dims:
    keys = jax.random.split(jax.random.key(3 + d), REPS)
    e, wmax = jax.vmap(one_step_ess, in_axes=(0, None))(keys, jnp.zeros(d))
    curse_ess.append(np.asarray(e))
    curse_wmax.append(np.asarray(wmax))
    print(f"N_x = {d:3d}: median ESS {np.median(e):7.1f}, median max weight "
          f"{np.median(wmax):.3f}")  # fmt: skip
med = [np.median(e) for e in curse_ess]
# the median ESS falls monotonically with N_x; at N_x = 1 it is ~0.7 N (one-step theory of the
# first section with R = 1: sqrt(3)/2 exp(-y^2/6) averaged over y, > 30% of N for any y)
# and at N_x = 64 a few particles carry everything (median ESS < 3, max weight > 0.3)
assert all(a > b for a, b in zip(med, med[1:]))
assert med[0] > 0.3 * N_CURSE
assert med[-1] < 3 and np.median(curse_wmax[-1]) > 0.3

ax = axes[1]
ax.boxplot(curse_ess)
ax.set_xticks(range(1, len(dims) + 1), [str(d) for d in dims])
ax.set_yscale("log")
ax.set_xlabel(r"state dimension $N_x$ (all observed)")
ax.set_ylabel(r"$N_\mathrm{eff}$ of one step")
ax.set_title(f"weight collapse, N = {N_CURSE} particles")
fig
