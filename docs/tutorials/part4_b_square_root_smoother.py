# %% [markdown]
# # 4.B Square-root smoothers: EnsembleSqrtSmoother
#
# The ensemble RTS smoother of [4.2](../part4_a_sequential_smoothers/) regresses the
# smoothed increment of time $t+1$ onto time $t$ member by member, so its anomalies depend
# on how the members are *paired* across times. Model noise breaks that pairing, and with it
# the covariance. The square-root smoother decomposes the update instead: the **mean** gets
# the RTS gain, and the **anomalies** get a deterministic, symmetric square-root transform in
# ensemble space, chosen so that the sample covariance is exactly the RTS covariance of the
# ensemble's own statistics.
#
# The problem: a linear model with process noise $Q = 0.1\,I$ per cycle, $N_x = 10$ state
# variables, $N_y = 4$ observed combinations and only $N_e = 6$ members, so the ensemble
# spans a 5-dimensional subspace of the state space.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.filters as ff
import filterax.primitives as fxp
import filterax.smoothers as fs
import filterax.zoo as fz

jax.config.update("jax_enable_x64", True)

N_X, N_Y, N_E, N_CYCLES = 10, 4, 6, 20  # docs size
rng = np.random.default_rng(4)
q, _ = np.linalg.qr(rng.normal(size=(N_X, N_X)))
A_model = q * rng.uniform(0.9, 1.02, N_X)
H = rng.normal(size=(N_Y, N_X)) / np.sqrt(N_X)
dynamics = fz.StochasticDynamics(fz.LinearModel(jnp.asarray(A_model)), noise=0.1)
obs_op, R = fxp.LinearObs(jnp.asarray(H)), fxp.diagonal_noise(jnp.full(N_Y, 0.2))
ys = jnp.asarray(rng.normal(size=(N_CYCLES, N_Y)))
times = jnp.arange(1.0, N_CYCLES + 1.0)
ens0 = jnp.asarray(rng.normal(size=(N_E, N_X)))
filt, key = ff.ETKF(), jax.random.key(0)
history = ff.assimilate(
    filt, dynamics, obs_op, R, ens0, ys, times, key=key, save="forecast_and_analysis"
)
sqrt = fs.EnsembleSqrtSmoother().smooth(filt, history, None, None, None, save_ensembles=True)
enrts = fs.EnsembleRTS().smooth(filt, history, None, None, None, save_ensembles=True)


def anomalies(x):
    x = np.asarray(x)
    return x - x.mean(-2, keepdims=True)


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


# %% [markdown]
# ## 4.4 EnsembleSqrtSmoother: the deterministic square-root backward pass
#
# With $A$ the analysis anomalies at $t$, $F$ the forecast anomalies at $t+1$ and $D$ the
# smoothed anomalies at $t+1$ (rows = members), the master list's square-root update is
#
# $$\Lambda = I + K_e\,(D^\top D - F^\top F)\,K_e^\top,\qquad K_e = (F F^\top)^+ F,\qquad
# X^{s\prime}_t = \Lambda^{1/2} A_t ,$$
#
# and the mean is updated with the dual RTS gain,
# $\bar x^s_t = \bar x^a_t + (\bar x^s_{t+1} - \bar x^f_{t+1})\,F^\top (F F^\top)^+ A$.
# Then $A^\top \Lambda A/(N_e-1) = P^a_t + G_t (P^s_{t+1} - P^f_{t+1}) G_t^\top$: the
# smoothed covariance is the RTS one. filterax writes
# $\Lambda = (I - \Pi) + K_e D^\top D K_e^\top$ with the projector
# $\Pi = K_e F^\top = (F F^\top)^+ F F^\top$, the same matrix
# ($K_e F^\top F K_e^\top = \Pi$), PSD by construction, and takes its symmetric root.
#
# The next cell rebuilds every backward step in numpy from the stored ensembles, with the
# master list's formula, and compares the anomalies member by member.

# %%
errors_members, errors_cov_sqrt, errors_cov_rts = [], [], []
for t in range(N_CYCLES - 1):
    Aa = anomalies(history.ensembles[t])
    F = anomalies(history.forecast_ensembles[t + 1])
    D = anomalies(sqrt.smoothed_ensembles[t + 1])
    K_e = np.linalg.pinv(F @ F.T) @ F
    Lam = np.eye(N_E) + K_e @ (D.T @ D - F.T @ F) @ K_e.T
    evals, evecs = np.linalg.eigh(Lam)
    root = evecs @ np.diag(np.sqrt(np.clip(evals, 0, None))) @ evecs.T  # symmetric root
    errors_members.append(rel_err(anomalies(sqrt.smoothed_ensembles[t]), root @ Aa))
    # the RTS covariance of the ensemble's own statistics, with the primal gain G = F^+ A
    G = np.linalg.pinv(F) @ Aa
    cov_rts = (Aa.T @ Aa + G.T @ (D.T @ D - F.T @ F) @ G) / (N_E - 1)
    for errs, ens in ((errors_cov_sqrt, sqrt), (errors_cov_rts, enrts)):
        S = anomalies(ens.smoothed_ensembles[t])
        errs.append(rel_err(S.T @ S / (N_E - 1), cov_rts))
print(f"anomalies vs Lambda^(1/2) A: worst {max(errors_members):.1e}")
print(
    f"covariance vs the RTS formula: sqrt smoother {max(errors_cov_sqrt):.1e}, "
    f"EnsembleRTS {max(errors_cov_rts):.1e}"
)
member_gap = [
    rel_err(anomalies(sqrt.smoothed_ensembles[t]), anomalies(enrts.smoothed_ensembles[t]))
    for t in range(N_CYCLES)
]
print(f"|sqrt - EnsembleRTS| anomalies, member by member: median {np.median(member_gap):.2f}")
# algebraic identities in float64 (O(1) numbers, pinv of a well-conditioned Gram): round-off
assert max(errors_members) < 1e-9
assert max(errors_cov_sqrt) < 1e-9
# both smoothers share the mean (same dual gain): an identity
assert rel_err(sqrt.smoothed_mean, enrts.smoothed_mean) < 1e-9
# here N_e - 1 = 5 <= N_x and F has full rank N_e - 1, so the regression's covariance is the
# RTS formula too (Raanes 2016): two square roots of one covariance, different members
assert max(errors_cov_rts) < 1e-9
assert np.median(member_gap[:-1]) > 1e-2

# %% [markdown]
# Both ensembles carry the same mean and covariance, but not the same members: the
# regression of `EnsembleRTS` is *a* square root of the RTS covariance (here, because
# $N_e - 1 \le N_x$ and $F$ has full rank $N_e - 1$, the forecast anomalies determine the
# regression exactly), and $\Lambda^{1/2}$ is the *symmetric* one, the transform closest to
# the identity. With more members than the forecast anomalies span
# ($N_e - 1 > \mathrm{rank}\,F$, e.g. $N_e > N_x + 1$) and model noise, the regression loses
# the RTS covariance, because it depends on which member at $t$ produced which forecast at
# $t + 1$, a pairing the noise scrambles; the square-root update does not use the pairing and
# keeps the covariance by construction (the library's test suite checks that case).

# %% [markdown]
# **Perturbations in the span of $A_t$.** $\Lambda^{1/2}$ acts from the left, on the
# members, so every smoothed perturbation is a combination of the analysis perturbations of
# the same time: the smoothed ensemble stays in the $(N_e - 1)$-dimensional subspace the
# filter's ensemble spans (here 5 of 10 dimensions), exactly as a square-root filter's
# analysis stays in its forecast's. The check: the part of the smoothed anomalies outside
# the row span of $A_t$ is zero to round-off, while the smoothed anomalies are *not* the
# analysis anomalies (the transform does something).

# %%
outside, changed = [], []
for t in range(N_CYCLES):
    Aa, S = anomalies(history.ensembles[t]), anomalies(sqrt.smoothed_ensembles[t])
    projector = np.linalg.pinv(Aa) @ Aa  # onto the row span of A_t (N_x x N_x, rank N_e - 1)
    outside.append(np.linalg.norm(S - S @ projector) / np.linalg.norm(S))
    changed.append(np.linalg.norm(S - Aa) / np.linalg.norm(Aa))
print(f"rank of A_t: {np.linalg.matrix_rank(Aa)} of N_x = {N_X}")
print(
    f"|S - S P_A| / |S|: worst {max(outside):.1e};  |S - A| / |A|: median {np.median(changed):.2f}"
)
assert max(outside) < 1e-10  # in the span, to round-off
assert np.median(changed[:-1]) > 1e-2  # yet changed (the final row is the analysis itself)

sd = lambda x: np.sqrt(np.var(np.asarray(x), axis=1, ddof=1).mean(-1))  # noqa: E731
t_axis = np.asarray(times)
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
ax0.semilogy(
    t_axis[:-1], errors_cov_sqrt, "o-", color="C2", label="EnsembleSqrtSmoother: $P^s$ error"
)
ax0.semilogy(t_axis[:-1], errors_cov_rts, "s--", color="C1", label="EnsembleRTS: $P^s$ error")
ax0.semilogy(t_axis, np.maximum(member_gap, 1e-16), "^-", color="C4",
             label="|sqrt - EnsembleRTS| members")  # fmt: skip
ax0.semilogy(t_axis, outside, "x", color="C2", label="sqrt: part outside span$(A_t)$")
ax0.set_xlabel("cycle $t$")
ax0.set_ylabel("relative size")
ax0.set_title("same covariance, different members, inside span$(A_t)$")
ax0.legend(fontsize=7)
ax1.plot(t_axis, sd(history.ensembles), color="C0", label="ETKF analysis")
ax1.plot(t_axis, sd(sqrt.smoothed_ensembles), color="C2", label="EnsembleSqrtSmoother")
ax1.plot(t_axis, sd(enrts.smoothed_ensembles), "o", mfc="none", color="C1", label="EnsembleRTS")
ax1.set_xlabel("cycle $t$")
ax1.set_ylabel("ensemble spread")
ax1.set_title("smoothing shrinks the spread")
ax1.legend()
plt.show()

# %% [markdown]
# Both smoothers need only the stored ensembles (no replay, no observations, no key), and
# both refuse localised filters; the [selection guide](../part4_d_selection_guide/)
# compares their cost and accuracy with the EnKS on a chaotic model.
