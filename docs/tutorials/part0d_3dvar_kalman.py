# %% [markdown]
# # 0.7 · 3D-Var vs Kalman: one analysis, two derivations
#
# Variational data assimilation writes the analysis as the minimiser of a cost function
# instead of a formula. This page shows that on a linear-Gaussian problem the two views give
# the *same numbers*: 3D-Var with the background covariance $B = P^f$ is the Kalman analysis,
# so the Kalman filter is sequential 3D-Var, and the minimiser is the closed form. (Part 0.D,
# tutorial 0.7; 4D-Var and its adjoint are tutorial 0.8.)
#
# The 3D-Var cost, with background $x^b$ (covariance $B$), observations $y$ (covariance $R$)
# and a linear observation operator $H$:
#
# $$J(x) = \tfrac{1}{2}(x - x^b)^\top B^{-1}(x - x^b)
# + \tfrac{1}{2}(y - H x)^\top R^{-1}(y - H x).$$
#
# filterax minimises it in *control-variable* form: with $B = U U^\top$ and $x = x^b + U v$,
# $J(v) = \tfrac12\|v\|^2 + \tfrac12\|y - H(x^b + Uv)\|^2_{R^{-1}}$, so $B^{-1}$ is never
# formed; the normal equations $(I + U^\top H^\top R^{-1} H U)\,v = U^\top H^\top R^{-1} d$
# are solved by conjugate gradients (`filterax.zoo.variational_analysis`; `Var3D` is the same
# solver cycled with a static $B$). The page runs in float64 because it compares with exact
# references.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import filterax.filters as ff
from filterax.zoo import background_sqrt, variational_analysis, variational_cost

jax.config.update("jax_enable_x64", True)

N_CYCLES = 40  # docs size: cycles of the linear twin

# %% [markdown]
# ## 0.7 3D-Var vs Kalman — duality
#
# For a linear $H$ the 3D-Var cost is quadratic; setting its gradient
# $\nabla J = B^{-1}(x - x^b) - H^\top R^{-1}(y - Hx)$ to zero gives the closed form
#
# $$x^a = x^b + B H^\top (H B H^\top + R)^{-1}(y - H x^b),\qquad
# (\nabla^2 J)^{-1} = (B^{-1} + H^\top R^{-1} H)^{-1} = (I - KH)B,$$
#
# which is the Kalman analysis with gain $K = BH^\top(HBH^\top + R)^{-1}$ when $B = P^f$.
# So the Kalman filter *is* sequential 3D-Var: forecast $x^f = M x^a$,
# $P^f = M P^a M^\top + Q$, then minimise $J$ with $B = P^f$, and take $P^a$ as the inverse
# Hessian of $J$. The page runs exactly that loop — every analysis by the conjugate-gradient
# minimiser, every $P^a$ from `jax.hessian` of the cost — beside `KalmanFilter` on a
# six-variable linear model observed in three components.

# %%
rng = np.random.default_rng(0)
N_X, N_Y = 6, 3
A = jnp.asarray(0.97 * np.linalg.qr(rng.standard_normal((N_X, N_X)))[0])  # a damped rotation
H = jnp.asarray(rng.standard_normal((N_Y, N_X)))
r = jnp.asarray(rng.uniform(0.3, 1.0, N_Y))  # R = diag(r)
q = jnp.full(N_X, 0.05)  # Q = diag(q)
mean0, cov0 = jnp.zeros(N_X), jnp.eye(N_X)


@jax.jit
def simulate(key):  # a truth and its observations
    k0, k1 = jax.random.split(key)

    def step(x, k):
        kq, kr = jax.random.split(k)
        x = A @ x + jnp.sqrt(q) * jax.random.normal(kq, (N_X,))
        return x, (x, H @ x + jnp.sqrt(r) * jax.random.normal(kr, (N_Y,)))

    x0 = mean0 + jax.random.normal(k0, (N_X,))
    return jax.lax.scan(step, x0, jax.random.split(k1, N_CYCLES))[1]


truth, obs = simulate(jax.random.key(1))
times = jnp.arange(1.0, N_CYCLES + 1)

kf = ff.KalmanFilter().filter(mean0, cov0, obs, times, A, H, r, q)


def three_d_var(xb, B, y):
    """One 3D-Var analysis (CG in control space) and its inverse Hessian."""
    U = background_sqrt(B)
    res = variational_analysis(lambda x: (H @ x)[None], xb, U, y[None], r)
    hessian = jax.hessian(
        lambda x: variational_cost(
            lambda z: (H @ z)[None], xb, U, y[None], r, jnp.linalg.solve(U.as_matrix(), x - xb)
        )
    )
    Pa = jnp.linalg.inv(hessian(res.analysis))
    return res.analysis, Pa


@jax.jit
def sequential_3dvar(mean0, cov0, obs):
    def cycle(carry, y):
        xa, Pa = carry
        xf, Pf = A @ xa, A @ Pa @ A.T + jnp.diag(q)  # the forecast of the Kalman filter
        xa, Pa = three_d_var(xf, 0.5 * (Pf + Pf.T), y)  # ... and 3D-Var with B = P^f
        return (xa, Pa), (xa, Pa)

    return jax.lax.scan(cycle, (mean0, cov0), obs)[1]


var_mean, var_cov = sequential_3dvar(mean0, cov0, obs)
gap_mean = jnp.max(jnp.abs(var_mean - kf.mean), axis=1)
gap_cov = jnp.max(jnp.abs(var_cov - kf.cov), axis=(1, 2))
print(
    f"max |x_3dvar - x_KF| = {float(gap_mean.max()):.2e},"
    f"  max |P_3dvar - P_KF| = {float(gap_cov.max()):.2e}"
)

# %% [markdown]
# The two agree to round-off at every cycle. The tolerance $10^{-8}$ is the conjugate-gradient
# stopping rule (relative residual $10^{-10}$ in float64) times the condition number of the
# control-space Hessian, here below $10^2$; any algebra error (a missing $Q$, a transposed
# $H$) is of order $10^{-1}$.

# %%
assert float(gap_mean.max()) < 1e-8, gap_mean
assert float(gap_cov.max()) < 1e-8, gap_cov

# %% [markdown]
# **Minimisation = closed form.** In two dimensions the cost can be drawn. Below, $x^b = 0$,
# $B$ correlated, and one observation of $x_1$ only ($H = [1\ 0]$): the observation term is a
# valley along $x_2$, the background term a bowl. Plain gradient descent on $J$
# (`jax.grad` of `variational_cost`), the CG minimiser and the closed form all land on the
# same point — the Kalman analysis, which moves $x_2$ through the correlation in $B$ although
# $x_2$ is not observed.

# %%
B2 = jnp.array([[1.0, 0.8], [0.8, 1.0]])
H2, r2 = jnp.array([[1.0, 0.0]]), 0.25
xb2, y2 = jnp.zeros(2), jnp.array([1.5])
N_GD = 400  # gradient-descent steps


def observe2(z):
    return (H2 @ z)[None]


@jax.jit
def two_d_example(start, g1, g2):
    U2 = background_sqrt(B2)

    def cost_x(x):  # J as a function of the state: v = U^{-1}(x - x^b)
        v = jnp.linalg.solve(U2.as_matrix(), x - xb2)
        return variational_cost(observe2, xb2, U2, y2[None], r2, v)

    closed = xb2 + B2 @ H2.T @ jnp.linalg.solve(H2 @ B2 @ H2.T + r2, y2 - H2 @ xb2)
    cg = variational_analysis(observe2, xb2, U2, y2[None], r2).analysis
    step = 1.0 / jnp.linalg.eigvalsh(jax.hessian(cost_x)(xb2)).max()  # 1 / Lipschitz constant

    def descend(x, _):
        x = x - step * jax.grad(cost_x)(x)
        return x, x

    path = jax.lax.scan(descend, start, None, length=N_GD)[1]
    J = jax.vmap(jax.vmap(lambda a, b: cost_x(jnp.stack([a, b]))))(g1, g2)
    return closed, cg, jnp.concatenate([start[None], path]), J


g1, g2 = jnp.meshgrid(jnp.linspace(-2, 2.5, 120), jnp.linspace(-2, 2.5, 120))
closed, cg, path, J = two_d_example(jnp.array([-1.5, 1.5]), g1, g2)
print("closed form", closed, "| CG", cg, "| gradient descent", path[-1])
# CG is exact for a 2-D quadratic (two steps); gradient descent converges linearly with
# rate 1 - 1/cond(Hessian) ~ 0.95 here, so 400 steps reach ~1e-9.
assert jnp.allclose(cg, closed, atol=1e-10) and jnp.allclose(path[-1], closed, atol=1e-7)

fig, ax = plt.subplots(figsize=(5.5, 4.6), constrained_layout=True)
cs = ax.contour(g1, g2, J, levels=np.geomspace(0.05, 12, 14), cmap="viridis", linewidths=0.8)
ax.plot(path[:, 0], path[:, 1], ".-", color="C1", ms=2, lw=0.8, label="gradient descent")
ax.plot(*xb2, "s", color="C0", label="background $x^b$")
ax.axvline(float(y2[0]), color="0.5", ls=":", label="observation $y = x_1$")
ax.plot(*closed, "*", color="C3", ms=14, label="closed form = Kalman")
ax.plot(*cg, "x", color="k", ms=9, label="CG minimiser")
ax.set_xlabel("$x_1$ (observed)")
ax.set_ylabel("$x_2$ (not observed)")
ax.set_title("3D-Var cost $J(x)$")
ax.legend(fontsize=8, loc="lower right")
plt.show()

# %% [markdown]
# The gap between the sequential 3D-Var and the Kalman filter over the run, for the mean and
# the covariance (round-off level), beside the analysis error of either:

# %%
err = jnp.sqrt(jnp.mean((kf.mean - truth) ** 2, axis=1))
fig, ax = plt.subplots(figsize=(7, 3), constrained_layout=True)
ax.semilogy(times, gap_mean, color="C0", label="max |mean 3D-Var − mean KF|")
ax.semilogy(times, gap_cov, color="C1", label="max |P 3D-Var − P KF|")
ax.semilogy(times, err, color="C2", label="analysis RMSE (either)")
ax.set_xlabel("cycle")
ax.set_ylabel("absolute difference")
ax.legend(fontsize=8)
plt.show()
