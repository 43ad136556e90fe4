# %% [markdown]
# # 10.A Sequential variational inference: foundations
#
# Sequential VI keeps a tractable belief $q_t(x_t) \approx p(x_t \mid y_{1:t})$ and updates
# it as each observation arrives by maximising a one-step evidence lower bound. This page
# writes that recursion with `filterax.learn` (10.1), checks that with Gaussians and a linear
# observation it *is* the Kalman filter, shows where it departs from the ensemble Kalman
# update when the observation is nonlinear, and derives the ETKF as the exact maximiser of
# the same ELBO in ensemble space (10.2).

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import filterax.filters as ff
import filterax.learn as fl
import filterax.primitives as fxp

jax.config.update("jax_enable_x64", True)  # the page compares with exact references

N_X, N_Y = 4, 3  # docs size: the linear-Gaussian step
N_CYCLES = 8  # cycles of the from-scratch recursion
rng = np.random.default_rng(0)


def np_kalman(m, C, H, R, y):
    """The gain form of the Kalman update (numpy; independent of the library's solver)."""
    S = H @ C @ H.T + R
    K = C @ H.T @ np.linalg.inv(S)
    Ca = (np.eye(len(m)) - K @ H) @ C
    v = y - H @ m
    log_evidence = -0.5 * (
        len(y) * np.log(2 * np.pi) + np.linalg.slogdet(S)[1] + v @ np.linalg.solve(S, v)
    )
    return m + K @ v, 0.5 * (Ca + Ca.T), log_evidence


# %% [markdown]
# ## 10.1 Sequential VI from scratch — recursive ELBO, Gaussian limit = Kalman
#
# At time $t$ the forecast $p(x_t \mid y_{1:t-1})$ plays the prior and $q_t$ is chosen to
# maximise the recursive ELBO
#
# $$\mathcal L_t(q_t) = \mathbb E_{q_t}[\log p(y_t \mid x_t)]
# - \mathrm{KL}\big(q_t \,\|\, q^\mathrm{forecast}_{t-1}\big)
# = \log p(y_t \mid y_{1:t-1}) - \mathrm{KL}\big(q_t \,\|\, p(x_t \mid y_{1:t})\big).$$
#
# The second form says everything: the maximiser over *all* $q$ is the filtering posterior
# and the maximum is the log evidence of the new observation. With a Gaussian forecast
# $\mathcal N(\hat m, \hat C)$ and $y = Hx + \varepsilon$, $\varepsilon \sim \mathcal N(0, R)$,
# the posterior is Gaussian, so the best Gaussian $q = \mathcal N(m, C)$ is exact; setting
# $\nabla_m \mathcal L = 0$ and $\nabla_C \mathcal L = 0$ in
#
# $$\mathcal L(m, C) = \log \mathcal N(y; Hm, R) - \tfrac12 \operatorname{tr}(R^{-1} H C H^\top)
# - \mathrm{KL}\big(\mathcal N(m, C) \,\|\, \mathcal N(\hat m, \hat C)\big)$$
#
# gives $C^{-1} = \hat C^{-1} + H^\top R^{-1} H$ and
# $m = \hat m + C H^\top R^{-1}(y - H\hat m)$: the information form of the Kalman update.
# `fl.fit_gaussian_elbo` solves it (closed form by default for a linear $H$); `fl.recursive_elbo`
# evaluates $\mathcal L_t$ for any $(m, C)$. The check is against the numpy *gain* form above.

# %%
A = rng.normal(size=(N_X, N_X))
prior_cov = A @ A.T / N_X + 0.5 * np.eye(N_X)
prior_mean = rng.normal(size=N_X)
H = rng.normal(size=(N_Y, N_X))
R = np.diag([0.5, 1.0, 1.5])
y = rng.normal(size=N_Y)

args = (prior_mean, prior_cov, y, jnp.asarray(H), jnp.asarray(R))


@jax.jit  # one compiled program (op-by-op execution would compile every primitive)
def closed_form_and_elbo_elsewhere(args, m_other, C_other):
    fit = fl.fit_gaussian_elbo(*args)
    return fit, fl.recursive_elbo(m_other, C_other, *args)


m_kf, C_kf, log_evidence = np_kalman(prior_mean, prior_cov, H, R, y)
fit, worse = closed_form_and_elbo_elsewhere(args, m_kf + 0.3, 1.5 * C_kf)
err_m = np.abs(np.asarray(fit.mean) - m_kf).max()
err_C = np.abs(np.asarray(fit.cov) - C_kf).max()
print(f"|m_VI - m_KF| = {err_m:.1e}   |C_VI - C_KF| = {err_C:.1e}")
print(f"max ELBO = {float(fit.elbo):.10f}   log p(y) = {log_evidence:.10f}")
# two algebraically different float64 routes (information form with Cholesky factors vs
# gain form with an inverse) on O(1), well-conditioned 4x4 matrices: 1e-8 is ~1e6 x round-off
assert err_m < 1e-8 and err_C < 1e-8
assert abs(float(fit.elbo) - log_evidence) < 1e-10  # ELBO = log p(y) - 0 at the posterior
# any other Gaussian is strictly below: the gap is the KL to the posterior
assert float(worse) < log_evidence - 1e-3

# %% [markdown]
# **Gradient ascent reaches it.** `solver="gradient"` maximises the same ELBO with an optax
# optimiser over $(m, L)$, $C = LL^\top$ (a Cholesky factor with a positive diagonal),
# starting from the prior. On this smooth, strictly concave problem Adam climbs to the log
# evidence — the ceiling of the curve — and lands on the Kalman update.

# %%
N_ADAM = 400
adam = fl.fit_gaussian_elbo(*args, solver="gradient", optimizer=optax.adam(0.05), n_steps=N_ADAM)

fig, ax = plt.subplots(figsize=(7, 3.6), constrained_layout=True)
ax.plot(np.asarray(adam.history), color="C0", label="Adam (lr 0.05), from the prior")
ax.axhline(log_evidence, color="k", ls=":", label=r"$\log p(y)$ = the Kalman update's ELBO")
ax.set_xlabel("optimiser step")
ax.set_ylabel("recursive ELBO")
ax.set_title("ELBO ascent from the prior to the Kalman update")
ax.legend()
plt.show()

err_adam = (np.abs(np.asarray(adam.mean) - m_kf).max(), np.abs(np.asarray(adam.cov) - C_kf).max())
print(
    f"Adam, {N_ADAM} steps: ELBO gap {log_evidence - float(adam.elbo):.1e}, "
    f"|m - m_KF| = {err_adam[0]:.1e}, |C - C_KF| = {err_adam[1]:.1e}"
)
history = np.asarray(adam.history)
assert history[-1] > history[0] + 1  # it climbed
assert np.all(history <= log_evidence + 1e-12)  # a lower bound all the way (round-off slack)
# converged to the Kalman update (observed: ~1e-9); 1e-6 leaves room for optimiser details
assert max(err_adam) < 1e-6 and abs(log_evidence - float(adam.elbo)) < 1e-8

# %% [markdown]
# **The recursion.** Cycling forecast → ELBO maximisation on a damped rotation observed in its
# first coordinate is the Kalman filter, step after step, and the sum of the maximal ELBOs
# is the log evidence of the whole record, $\log p(y_{1:T}) = \sum_t \log p(y_t \mid y_{1:t-1})$.

# %%
theta = 0.3
M = 0.98 * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
Q, H2, R2 = 0.05 * np.eye(2), np.array([[1.0, 0.0]]), np.array([[0.3]])
x, ys = np.array([2.0, 0.0]), []
for _ in range(N_CYCLES):
    x = M @ x + np.sqrt(0.05) * rng.normal(size=2)
    ys.append(H2 @ x + np.sqrt(0.3) * rng.normal(size=1))

vi_step = jax.jit(lambda m, C, y: fl.fit_gaussian_elbo(m, C, y, jnp.asarray(H2), jnp.asarray(R2)))
m_vi, C_vi = m_kf2, C_kf2 = np.array([2.0, 0.0]), np.eye(2)
total_elbo = total_log_evidence = 0.0
for y_t in ys:
    step = vi_step(M @ m_vi, M @ C_vi @ M.T + Q, y_t)  # forecast, then maximise the ELBO
    m_vi, C_vi = np.asarray(step.mean), np.asarray(step.cov)
    total_elbo += float(step.elbo)
    m_kf2, C_kf2, le = np_kalman(M @ m_kf2, M @ C_kf2 @ M.T + Q, H2, R2, y_t)
    total_log_evidence += le
    assert np.abs(m_vi - m_kf2).max() < 1e-8 and np.abs(C_vi - C_kf2).max() < 1e-8
print(f"sum of max ELBOs {total_elbo:.10f}  ==  log p(y_1:T) {total_log_evidence:.10f}")
assert abs(total_elbo - total_log_evidence) < 1e-9  # N_CYCLES round-off sums

# %% [markdown]
# **A nonlinear observation.** With $y = h(x) + \varepsilon$ nonlinear the posterior is not
# Gaussian and the two Gaussian answers differ:
#
# - the **Gaussian VI optimum** maximises the ELBO, i.e. minimises
#   $\mathrm{KL}(q \,\|\, p(x \mid y))$, with the expectation estimated by reparameterised
#   Monte Carlo ($x = m + L\epsilon$) inside the gradient ascent;
# - the **EnKF** applies the Kalman update with the *ensemble's* cross-covariances, a
#   statistical linearisation of $h$: $m^a = \hat m + C^{xh}(C^{hh} + R)^{-1}(y - \overline{h})$
#   (here the ETKF with 1000 prior samples, so sampling error is small).
#
# The reference is the exact posterior on a $301 \times 301$ grid. Both Gaussians are scored
# by their KL to it, computed by quadrature.

# %%
m_nl, C_nl = np.array([0.8, 0.0]), np.array([[1.0, 0.3], [0.3, 0.6]])
r_nl = 0.1
y_nl = np.array([1.2])


def h(x):  # a curved observation: x_1 + x_0^2 / 2
    return jnp.stack([x[1] + 0.5 * x[0] ** 2])


vi = fl.fit_gaussian_elbo(
    m_nl,
    C_nl,
    y_nl,
    h,
    jnp.array([[r_nl]]),
    solver="gradient",
    method="monte_carlo",
    optimizer=optax.adam(0.02),
    n_steps=1000,
    key=jax.random.key(0),
    n_samples=32,
)
members = jax.random.multivariate_normal(jax.random.key(1), m_nl, C_nl, (1000,))
etkf_nl = jax.jit(
    lambda X, y: ff.ETKF().analysis(None, X, y, h, fxp.diagonal_noise(jnp.array([r_nl])))
)
enkf = np.asarray(etkf_nl(members, jnp.asarray(y_nl)).particles)
gaussians = {
    "Gaussian VI": (np.asarray(vi.mean), np.asarray(vi.cov)),
    "EnKF (ETKF, 1000 members)": (enkf.mean(0), np.cov(enkf, rowvar=False)),
}

# the exact posterior on a grid
g0, g1 = np.linspace(-3.0, 3.5, 301), np.linspace(-4.0, 3.0, 301)
G0, G1 = np.meshgrid(g0, g1, indexing="ij")
pts = np.stack([G0, G1], -1)
cell = (g0[1] - g0[0]) * (g1[1] - g1[0])


def log_gauss(pts, m, C):
    d = pts - m
    return -0.5 * (
        np.einsum("...i,ij,...j->...", d, np.linalg.inv(C), d) + np.linalg.slogdet(2 * np.pi * C)[1]
    )


log_post = log_gauss(pts, m_nl, C_nl) - 0.5 * (y_nl[0] - (G1 + 0.5 * G0**2)) ** 2 / r_nl
log_post -= np.log(np.sum(np.exp(log_post - log_post.max())) * cell) + log_post.max()
post = np.exp(log_post)
m_post = np.einsum("ijk,ij->k", pts, post) * cell
d_post = pts - m_post
C_post = np.einsum("ijk,ijl,ij->kl", d_post, d_post, post) * cell


def kl_to_posterior(m, C):
    log_q = log_gauss(pts, m, C)
    return float(np.sum(np.exp(log_q) * (log_q - log_post)) * cell)


print(f"{'':27s} {'mean':>18s} {'KL(q || posterior)':>19s}")
print(f"{'exact posterior (grid)':27s} {np.array2string(m_post, precision=3):>18s}")
kl = {}
for name, (m, C) in gaussians.items():
    kl[name] = kl_to_posterior(m, C)
    print(f"{name:27s} {np.array2string(m, precision=3):>18s} {kl[name]:19.4f}")

fig, ax = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
ax.contourf(G0, G1, post, levels=12, cmap="Greys")
t = np.linspace(0, 2 * np.pi, 200)
circle = np.stack([np.cos(t), np.sin(t)])
for (name, (m, C)), c in zip(gaussians.items(), ("C0", "C1"), strict=True):
    ell = m[:, None] + 2 * np.linalg.cholesky(C) @ circle
    ax.plot(*ell, color=c, label=f"{name} (2 sd)")
    ax.plot(*m, "o", color=c)
ax.plot(*m_post, "k*", ms=10, label="exact posterior mean")
ax.set_xlim(-1.0, 3.0)
ax.set_ylim(-1.5, 2.0)
ax.set_xlabel("$x_0$")
ax.set_ylabel("$x_1$")
ax.set_title(r"posterior of $y = x_1 + x_0^2/2 + \varepsilon$ (grey) and two Gaussian answers")
ax.legend(fontsize=8, loc="lower left")
plt.show()

# The VI optimum is the Gaussian closest to the posterior in KL(q || p) — by construction, up
# to its Monte Carlo optimisation error; the EnKF's linearised update is measurably further.
assert kl["Gaussian VI"] < 0.5 * kl["EnKF (ETKF, 1000 members)"], kl
# and the two answers differ by more than the EnKF's sampling error (~ sd / sqrt(1000) = 0.03)
assert np.abs(gaussians["Gaussian VI"][0] - gaussians["EnKF (ETKF, 1000 members)"][0]).max() > 0.1

# %% [markdown]
# **Reading it.** The EnKF's mean is close to the posterior mean in $x_0$, but a linear
# regression of $h$ on the prior ensemble cannot follow the curved ridge: its Gaussian is
# far wider than the posterior and far from it in KL. The VI Gaussian concentrates on the
# posterior's high-density region instead ($\mathrm{KL}(q\,\|\,p)$ is mode-seeking), so
# its mean is pulled towards the mode, away from the posterior mean. Neither is the
# moment-matched Gaussian; which one is "right" depends on the loss the filter is judged by.

# %% [markdown]
# ## 10.2 Variational EnKF — the ETKF as ELBO ascent
#
# Take a forecast ensemble $X^f$ ($N_e \times N_x$, anomalies $X'$, observed anomalies
# $Y' = X' H^\top$, innovation $d = y - H\bar x^f$) and search $q$ in the span of the
# ensemble, $x = \bar x^f + X'^\top w$, with the ensemble's Gaussian as prior,
# $w \sim \mathcal N(0, I/(N_e - 1))$ (so that $x$ has the sample covariance
# $P = X'^\top X'/(N_e - 1)$). For $q(w) = \mathcal N(\bar w, \Sigma)$ the recursive ELBO is
#
# $$\mathcal L(\bar w, \Sigma) = -\mathcal J(\bar w) - \tfrac12 \operatorname{tr}(\tilde C \Sigma)
# + \tfrac12 \log|\Sigma| + \text{const},\qquad
# \mathcal J(w) = \tfrac{N_e - 1}2 \|w\|^2 + \tfrac12 \|d - Y'^\top w\|^2_{R^{-1}},$$
#
# with $\tilde C = (N_e - 1) I + Y' R^{-1} Y'^\top$ the Hessian of $\mathcal J$. Setting the
# gradient to zero: $\bar w = \tilde C^{-1} Y' R^{-1} d$ (one Newton step on the quadratic
# $\mathcal J$ from $w = 0$, exact) and $\Sigma = \tilde C^{-1}$. These are the ETKF's mean
# weights and — through $X'^a = [(N_e - 1)\tilde C^{-1}]^{1/2} X'$ — its analysis covariance
# $X'^\top \tilde C^{-1} X'$. **The ETKF analysis is the maximiser of the ELBO over Gaussians
# whose prior is the forecast ensemble's Gaussian**, and its log-likelihood row is the ELBO's
# maximum. Below, `fit_gaussian_elbo` in ensemble space (prior $\mathcal N(0, I/(N_e-1))$,
# "observation operator" $Y'^\top$, observation $d$) against the ETKF, and the same in state
# space with the prior $\mathcal N(\bar x^f, P)$.

# %%
N_E = 8
X = jnp.asarray(prior_mean + rng.normal(size=(N_E, N_X)) @ np.linalg.cholesky(prior_cov).T)
R_op = fxp.diagonal_noise(jnp.asarray(np.diag(R)))
x_bar = np.asarray(X).mean(0)
Xp = np.asarray(X) - x_bar  # anomalies, one member per row
Yp = Xp @ H.T
d = y - H @ x_bar
P = Xp.T @ Xp / (N_E - 1)


@jax.jit  # the ETKF and both ELBO maximisers in one compiled program
def etkf_and_vi(X, Yp, d, P):
    etkf = ff.ETKF().analysis(None, X, jnp.asarray(y), fxp.LinearObs(jnp.asarray(H)), R_op)
    prior_w = (jnp.zeros(N_E), jnp.eye(N_E) / (N_E - 1))  # w ~ N(0, I / (N_e - 1))
    w_fit = fl.fit_gaussian_elbo(*prior_w, d, Yp.T, R_op)  # ensemble space
    x_fit = fl.fit_gaussian_elbo(jnp.mean(X, 0), P, jnp.asarray(y), jnp.asarray(H), R_op)
    return etkf, w_fit, x_fit


etkf, w_fit, x_fit = etkf_and_vi(X, jnp.asarray(Yp), jnp.asarray(d), jnp.asarray(P))
Xa = np.asarray(etkf.particles)
mean_w = x_bar + Xp.T @ np.asarray(w_fit.mean)
cov_w = Xp.T @ np.asarray(w_fit.cov) @ Xp
C_tilde = (N_E - 1) * np.eye(N_E) + Yp @ np.linalg.solve(R, Yp.T)
w_etkf = np.linalg.solve(C_tilde, Yp @ np.linalg.solve(R, d))  # the ETKF's mean weights
checks = {
    "VI weights vs ETKF weights": np.abs(np.asarray(w_fit.mean) - w_etkf).max(),
    "VI weight cov vs inv(C_tilde)": np.abs(np.asarray(w_fit.cov) - np.linalg.inv(C_tilde)).max(),
    "ensemble-space VI mean vs ETKF": np.abs(mean_w - Xa.mean(0)).max(),
    "ensemble-space VI cov vs ETKF": np.abs(cov_w - np.cov(Xa, rowvar=False)).max(),
    "state-space VI mean vs ETKF": np.abs(np.asarray(x_fit.mean) - Xa.mean(0)).max(),
    "state-space VI cov vs ETKF": np.abs(np.asarray(x_fit.cov) - np.cov(Xa, rowvar=False)).max(),
    "max ELBO vs ETKF log-likelihood": abs(float(w_fit.elbo) - float(etkf.log_likelihood)),
}
for name, value in checks.items():
    print(f"{name:33s} {value:.1e}")
# round-off of O(1) float64 numbers through different factorisations (observed ~1e-15)
assert all(value < 1e-10 for value in checks.values()), checks
