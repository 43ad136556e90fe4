# %% [markdown]
# # Getting started: a Lorenz-96 twin experiment in five minutes
#
# This page installs one package, runs the classic data-assimilation experiment — a
# *twin experiment* on the 40-variable Lorenz-96 model — with the ensemble transform Kalman
# filter (ETKF), plots the truth against the analysis, and ends with the command that scores
# every method on the standard benchmarks. Every cell on this page ran when the site was built.
#
# ## 1. Install
#
# The experiment needs `filterax-filters` (the filters and the `run` driver) and
# `filterax-zoo` (the Lorenz-96 model and its DAPPER setup). Until the first release is on
# PyPI, build the wheels from a clone (see [Install](../install.md)):
#
# ```bash
# python3 -m pip install uv && python3 -m uv build --all-packages -o dist
# python3 -m pip install --find-links dist filterax-filters filterax-zoo matplotlib
# ```
#
# ## 2. The twin experiment
#
# A *truth* trajectory is drawn from the model, noisy observations of it are simulated, and
# the filter must recover the truth from the observations alone. The preset is the setup of
# Sakov & Oke (2008), as DAPPER runs it: Lorenz-96 with forcing $F = 8$, every component
# observed every $\Delta t = 0.05$ with noise $R = I$,
#
# $$\frac{dx_i}{dt} = (x_{i+1} - x_{i-2})\,x_{i-1} - x_i + F,\qquad
# y_k = x(t_k) + \varepsilon_k,\quad \varepsilon_k \sim \mathcal N(0, I).$$
#
# The page uses float64, as the library's tests do; float32 works too.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import presets

jax.config.update("jax_enable_x64", True)

N_CYCLES = 600  # docs size: DAPPER's published runs are longer, the score is already stable

ssm = presets.lorenz96_sakov2008()
twin = ssm.simulate(jax.random.key(0), N_CYCLES)
print(ssm.name, "| N_x =", ssm.n_state, "| N_y =", ssm.n_obs, "| dt_obs =", ssm.dt_obs)
print("truth", twin.truth.shape, "observations", twin.observations.shape)

# %% [markdown]
# ## 3. Run the ETKF
#
# An ensemble filter is an analysis kernel (`ETKF()`) wrapped with its post-processing into a
# cycled method; `run` compiles the whole experiment into one `lax.scan`. The settings are
# DAPPER's for this benchmark: $N_e = 20$ members, multiplicative inflation 1.04 and a random
# mean-preserving rotation each cycle. The ETKF's analysis (Bishop et al. 2001; Hunt et al.
# 2007) is, with $Y$ the observed anomalies and $d$ the innovation,
#
# $$\bar x^a = \bar x^f + X^f\,(Y^\top R^{-1} Y + (N_e - 1) I)^{-1}\,Y^\top R^{-1} d,\qquad
# X^a = X^f\,\big[(N_e - 1)(Y^\top R^{-1} Y + (N_e - 1) I)^{-1}\big]^{1/2}.$$

# %%
method = ff.EnsembleFilter(ff.ETKF(), inflator=fxp.MultiplicativeInflator(1.04), rotate=True)
ensemble0 = ssm.initial_ensemble(jax.random.key(1), 20)
out = ff.run(method, ssm, ensemble0, twin.observations, twin.times, key=jax.random.key(2))

scores = out.scores(twin.truth, ssm.burn_in_cycles)
print({name: round(float(value), 3) for name, value in scores.items()})

# %% [markdown]
# The time-mean analysis RMSE after the burn-in is close to DAPPER's published 0.20 for this
# configuration, and far below the error of the climatology (3.6): the filter tracks the
# chaotic truth from observations alone. The page checks it, so a regression breaks the docs
# build:

# %%
rmse_a = float(scores["rmse_a"])
assert 0.15 < rmse_a < 0.26, rmse_a
assert out.status == 0  # RunResult.OK: every cycle stayed finite

# %% [markdown]
# ## 4. Truth versus analysis
#
# The first state component over the last 150 cycles (truth, observations and the analysis
# mean), and the analysis RMSE over time beside the ensemble spread, which a well-tuned
# filter keeps close to its error.

# %%
t = twin.times
last = slice(N_CYCLES - 150, N_CYCLES)
rmse_t = jnp.sqrt(jnp.mean((out.analysis_mean - twin.truth) ** 2, axis=1))

fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(8, 5.5), constrained_layout=True)
ax0.plot(t[last], twin.truth[last, 0], "k-", lw=1.5, label="truth $x_0$")
ax0.plot(t[last], twin.observations[last, 0], "o", ms=2.5, color="0.6", label="observation")
ax0.plot(t[last], out.analysis_mean[last, 0], "-", color="C0", lw=1.2, label="ETKF analysis")
ax0.set_xlabel("time")
ax0.legend(loc="upper right", ncols=3, fontsize=8)
ax0.set_title("Lorenz-96, component 0")
ax1.semilogy(t, rmse_t, color="C0", lw=0.8, label="rmse.a")
ax1.semilogy(t, out.analysis_spread, color="C1", lw=0.8, label="spread.a")
ax1.axvline(t[ssm.burn_in_cycles], color="0.5", ls=":", label="end of burn-in")
ax1.set_xlabel("time")
ax1.legend(loc="upper right", ncols=3, fontsize=8)
plt.show()

# %% [markdown]
# ## 5. The leaderboard
#
# `filterax-bench` scores every registered method on the standard DA benchmarks (Lorenz-63,
# Lorenz-96, Kuramoto–Sivashinsky, ...) with DAPPER's published numbers beside ours. Its quick
# suite runs in about a minute on a laptop CPU:
#
# ```bash
# python3 -m pip install --find-links dist filterax-bench
# filterax-bench run          # the quick suite: table in the terminal, results in bench-results/
# filterax-bench list         # every benchmark and method
# ```
#
# Where to go next: the [Conventions](../conventions.md) page (ensemble axis, noise operators,
# keys, missing observations), [Failure modes](../failure_modes.md) (what each bad input
# gets), and the API reference of each package.
