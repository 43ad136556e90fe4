r"""Entropy-regularised optimal transport: log-domain Sinkhorn and OT resampling.

`sinkhorn_coupling` solves the entropy-regularised transport problem between two discrete
measures ``a = sum_i a_i delta_{x_i}`` and ``b = sum_j b_j delta_{y_j}``,

$$P^\varepsilon = \arg\min_{P \in U(a, b)} \langle P, C\rangle
  - \varepsilon H(P), \qquad U(a, b) = \{P \ge 0 : P\mathbf 1 = a,\ P^\top \mathbf 1 = b\},$$

by Sinkhorn's fixed-point iteration on the dual potentials written in the log domain (so it
is stable for small ``epsilon``, where the Gibbs kernel ``exp(-C / epsilon)`` underflows), with
optional ``epsilon``-scaling (Schmitzer 2019) to approach the exact (``epsilon -> 0``) linear
programme. `ot_resample` is the differentiable particle resampling of Corenflos, Thornton,
Deligiannidis & Doucet (2021): ``x~ = N P^T x`` with ``P`` the coupling between the weighted and
the uniformly weighted particle clouds.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike, Float

import filterax.primitives as fxp

__all__ = ["ot_resample", "sinkhorn_coupling", "squared_distance_cost"]


def _check_positive(value: Any, name: str, where: str) -> None:
    concrete = fxp.concrete_value(value)
    if concrete is not None and not (concrete.size == 1 and float(concrete) > 0.0):
        raise ValueError(f"{where}: `{name}` must be a positive scalar; got {value!r}.")


def squared_distance_cost(
    x: Float[ArrayLike, "N D"], y: Float[ArrayLike, "M D"]
) -> Float[Array, "N M"]:
    r"""The ``(N, M)`` matrix of squared Euclidean distances ``C_ij = |x_i - y_j|^2``.

    Computed as ``sum_k (x_ik - y_jk)^2`` (not ``|x|^2 + |y|^2 - 2 x.y``, whose cancellation
    gives small negative entries and a cost that is not exactly zero on the diagonal).
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            "squared_distance_cost: pass two 2-D point clouds (N, D) and (M, D) with the same "
            f"D; got shapes {x.shape} and {y.shape}."
        )
    return jnp.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)


def sinkhorn_coupling(
    cost: Float[ArrayLike, "N M"],
    log_a: Float[ArrayLike, " N"],
    log_b: Float[ArrayLike, " M"],
    epsilon: Float[ArrayLike, ""],
    *,
    n_iter: int = 200,
    tol: float | None = None,
    epsilon_scaling: float | None = None,
) -> Float[Array, "N M"]:
    r"""The entropy-regularised optimal coupling of two discrete measures (log-domain Sinkhorn).

    With dual potentials ``f, g`` the coupling is
    ``P_ij = exp(log a_i + log b_j + (f_i + g_j - C_ij) / epsilon)`` and one Sinkhorn sweep is

    $$g_j \leftarrow -\varepsilon \log\sum_i \exp\!\big(\log a_i + (f_i - C_{ij})/\varepsilon\big),
    \qquad
    f_i \leftarrow -\varepsilon \log\sum_j \exp\!\big(\log b_j + (g_j - C_{ij})/\varepsilon\big)$$

    (log-sum-exp throughout, so nothing underflows at small ``epsilon``). Each sweep ends with
    the ``f`` update, so the ROW marginal ``P 1 = a`` holds to round-off whatever the number of
    sweeps; the column marginal ``P^T 1 = b`` holds to the Sinkhorn tolerance.

    **Exact OT (``epsilon -> 0``).** With `epsilon_scaling` ``= q in (0, 1)`` sweep ``k`` uses
    ``epsilon_k = max(epsilon, q^k max|C|)``: the potentials are warm-started from a coarse
    problem and refined geometrically (Schmitzer 2019, §3.2; Kosowsky & Yuille 1994), which lets
    a small ``epsilon`` (e.g. ``1e-3`` of the cost scale) converge in hundreds to thousands of
    sweeps (fewer the better separated the optimal coupling; check the marginals); the
    coupling then approaches the linear-programme solution (for a unique optimal vertex,
    exponentially fast in ``1/epsilon``).

    **Differentiation: unrolled.** The sweeps are a `lax.scan` of fixed length `n_iter`, so
    reverse-mode derivatives (with respect to `cost`, `log_a`, `log_b`, `epsilon`) differentiate
    through every sweep. With `tol`, sweeps after convergence (column-marginal error
    ``max_j |sum_i P_ij - b_j| < tol`` at the target ``epsilon``) leave the potentials unchanged
    (a masked update, still one `lax.scan`, still differentiable); they still cost time.

    Zero-weight points (``log a_i = -inf``) get zero rows; ``a`` and ``b`` must each have at least
    one finite entry (otherwise the coupling is NaN — callers check).

    **Arguments:**

    - `cost`: ``C``, ``(N, M)``, finite.
    - `log_a`, `log_b`: log of the marginals, ``(N,)`` and ``(M,)``, each summing to 1 in the
      exp domain (normalise with ``log_a - logsumexp(log_a)``).
    - `epsilon`: the regularisation ``epsilon > 0`` in the units of `cost` (dynamic).
    - `n_iter`: the number of sweeps (static int).
    - `tol`: optional column-marginal tolerance for early freezing (static float).
    - `epsilon_scaling`: ``None`` (plain Sinkhorn at `epsilon`) or the decay factor ``q`` of
      the ``epsilon`` schedule (static float in ``(0, 1)``); the last sweeps must be at
      `epsilon`, so choose ``n_iter > log(epsilon / max|C|) / log(q)``.

    **Returns:** the coupling ``P``, ``(N, M)``.

    **Reference:** Cuturi (2013), *NeurIPS*; Peyré & Cuturi (2019), *Computational Optimal
    Transport*, §4.4 (log-domain); Schmitzer (2019), *SIAM J. Sci. Comput.* 41 (``epsilon``-
    scaling); Corenflos et al. (2021), *ICML* (differentiable particle filtering, unrolled).
    POT equivalent: ``ot.sinkhorn(a, b, C, epsilon, method="sinkhorn_log")``.

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        from filterax.learn import sinkhorn_coupling, squared_distance_cost

        x = jax.random.normal(jax.random.key(0), (5, 2))
        C = squared_distance_cost(x, x)
        log_u = jnp.full(5, -jnp.log(5.0))
        P = sinkhorn_coupling(C, log_u, log_u, 0.01, n_iter=300, epsilon_scaling=0.9)
        P.sum(axis=1)  # 0.2 each
        ```
    """
    where = "sinkhorn_coupling"
    cost = jnp.asarray(cost)
    dtype = jnp.result_type(cost, float)
    cost = cost.astype(dtype)
    log_a = jnp.asarray(log_a, dtype)
    log_b = jnp.asarray(log_b, dtype)
    if cost.ndim != 2 or log_a.shape != (cost.shape[0],) or log_b.shape != (cost.shape[1],):
        raise ValueError(
            f"{where}: pass cost (N, M), log_a (N,) and log_b (M,); got shapes {cost.shape}, "
            f"{log_a.shape} and {log_b.shape}."
        )
    if not isinstance(n_iter, int) or isinstance(n_iter, bool) or n_iter < 1:
        raise ValueError(f"{where}: n_iter must be a positive Python int; got {n_iter!r}.")
    if tol is not None and not (isinstance(tol, int | float) and tol > 0):
        raise ValueError(f"{where}: tol must be None or a positive float; got {tol!r}.")
    if epsilon_scaling is not None and not (
        isinstance(epsilon_scaling, int | float) and 0.0 < epsilon_scaling < 1.0
    ):
        raise ValueError(
            f"{where}: epsilon_scaling must be None or a decay factor in (0, 1) (e.g. 0.9); got "
            f"{epsilon_scaling!r}."
        )
    _check_positive(epsilon, "epsilon", where)
    epsilon = jnp.asarray(epsilon, dtype)

    if epsilon_scaling is None:
        schedule = jnp.full((n_iter,), epsilon)
    else:
        # A schedule from the cost scale down to epsilon; the scale is a constant of the
        # schedule, not a quantity to differentiate.
        scale = lax.stop_gradient(jnp.maximum(jnp.max(jnp.abs(cost)), epsilon))
        decay = jnp.asarray(epsilon_scaling, dtype) ** jnp.arange(n_iter, dtype=dtype)
        schedule = jnp.maximum(epsilon, scale * decay)

    def g_update(f: Array, eps: Array) -> Array:
        return -eps * jax.nn.logsumexp(log_a[:, None] + (f[:, None] - cost) / eps, axis=0)

    def f_update(g: Array, eps: Array) -> Array:
        return -eps * jax.nn.logsumexp(log_b[None, :] + (g[None, :] - cost) / eps, axis=1)

    def column_error(f: Array, g: Array) -> Array:
        log_p = log_a[:, None] + log_b[None, :] + (f[:, None] + g[None, :] - cost) / epsilon
        return jnp.max(jnp.abs(jnp.sum(jnp.exp(log_p), axis=0) - jnp.exp(log_b)))

    def sweep(carry: tuple[Array, Array, Array], eps: Array) -> tuple[tuple, None]:
        f, g, done = carry
        g_new = g_update(f, eps)
        f_new = f_update(g_new, eps)
        f_new = jnp.where(done, f, f_new)
        g_new = jnp.where(done, g, g_new)
        if tol is not None:
            done = done | ((eps <= epsilon) & (column_error(f_new, g_new) < tol))
        return (f_new, g_new, done), None

    init = (jnp.zeros(cost.shape[0], dtype), jnp.zeros(cost.shape[1], dtype), jnp.array(False))
    (f, g, _), _ = lax.scan(sweep, init, schedule)
    return jnp.exp(log_a[:, None] + log_b[None, :] + (f[:, None] + g[None, :] - cost) / epsilon)


def ot_resample(
    log_weights: Float[ArrayLike, " N"],
    particles: Float[ArrayLike, "N D"],
    *,
    epsilon: Float[ArrayLike, ""] = 0.05,
    n_iter: int = 200,
    tol: float | None = None,
    epsilon_scaling: float | None = 0.9,
    relative_epsilon: bool = True,
) -> Float[Array, "N D"]:
    r"""Differentiable optimal-transport resampling (Corenflos et al. 2021).

    With normalised weights ``w`` and ``P`` the entropy-regularised coupling between the
    weighted cloud ``sum_i w_i delta_{x_i}`` and the uniform one ``(1/N) sum_j delta_{x_j}``
    for the cost ``C_ij = |x_i - x_j|^2`` (`sinkhorn_coupling`), the resampled particles are

    $$\tilde x_j = N \sum_i P_{ij}\, x_i, \qquad \tilde X = N P^\top X .$$

    Deterministic (no key) and differentiable in the weights and particles. Because ``P 1 = w``
    to round-off (the last Sinkhorn half-step), the resampled mean ``(1/N) sum_j x~_j`` equals
    the weighted mean ``sum_i w_i x_i`` exactly; each ``x~_j`` is a convex combination of the
    particles to the Sinkhorn tolerance (``N sum_i P_ij = 1``). As ``epsilon -> 0`` it tends to
    the ETPF's OT resampling (Reich 2013); the entropic bias shrinks the cloud towards its
    mean by ``O(epsilon)``.

    **Arguments:**

    - `log_weights`: unnormalised log-weights ``(N,)`` (``-inf`` = zero weight; at least one
      finite).
    - `particles`: ``(N, D)``.
    - `epsilon`: the regularisation (dynamic); with `relative_epsilon` (default) in units of
      the mean pairwise squared distance (so ``0.05`` means the same for any scale), else in
      the units of ``|x|^2``.
    - `n_iter`, `tol`, `epsilon_scaling`: as in `sinkhorn_coupling` (static).
    - `relative_epsilon`: see `epsilon` (static bool).

    **Returns:** the ``(N, D)`` resampled particles (equally weighted).

    **Reference:** Corenflos, Thornton, Deligiannidis & Doucet (2021), *Differentiable particle
    filtering via entropy-regularized optimal transport*, ICML, Algorithm 2; Reich (2013), *SIAM
    J. Sci. Comput.* 35 (the ``epsilon = 0`` transform).

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        from filterax.learn import ot_resample

        x = jax.random.normal(jax.random.key(0), (50, 2))
        logw = -0.5 * jnp.sum((x - 1.0) ** 2, axis=1)
        xr = ot_resample(logw, x, epsilon=0.05)
        xr.mean(0), (jax.nn.softmax(logw)[:, None] * x).sum(0)  # equal
        ```
    """
    where = "ot_resample"
    particles = jnp.asarray(particles)
    if particles.ndim != 2:
        raise ValueError(
            f"{where}: particles must be a 2-D array (N, D), one particle per row; got shape "
            f"{particles.shape}. Reshape a single-state cloud with x[:, None]."
        )
    dtype = jnp.result_type(particles, float)
    particles = particles.astype(dtype)
    log_weights = jnp.asarray(log_weights, dtype)
    n = particles.shape[0]
    if log_weights.shape != (n,):
        raise ValueError(
            f"{where}: log_weights must have shape (N,) = ({n},), one per particle; got "
            f"{log_weights.shape}."
        )
    if n < 2:
        raise ValueError(f"{where}: needs at least 2 particles; got N={n}.")
    _check_positive(epsilon, "epsilon", where)
    coupling = _uniform_target_coupling(
        log_weights, particles, epsilon, n_iter, tol, epsilon_scaling, relative_epsilon
    )
    return n * fxp.matmul(coupling.T, particles)


def _uniform_target_coupling(
    log_weights: Array,
    particles: Array,
    epsilon: Any,
    n_iter: int,
    tol: float | None,
    epsilon_scaling: float | None,
    relative_epsilon: bool,
) -> Array:
    """The coupling of `ot_resample` (weighted cloud -> uniform cloud, squared distances)."""
    n = particles.shape[0]
    dtype = particles.dtype
    log_a = log_weights - jax.nn.logsumexp(log_weights)
    log_b = jnp.full((n,), -math.log(n), dtype)
    cost = squared_distance_cost(particles, particles)
    epsilon = jnp.asarray(epsilon, dtype)
    if relative_epsilon:
        # the mean squared distance sets the scale; a collapsed cloud (all equal) has cost 0
        # and any coupling is optimal, so a tiny floor keeps the division finite.
        scale = jnp.maximum(jnp.mean(cost), jnp.finfo(dtype).tiny / jnp.finfo(dtype).eps)
        cost = cost / scale
    return sinkhorn_coupling(
        cost, log_a, log_b, epsilon, n_iter=n_iter, tol=tol, epsilon_scaling=epsilon_scaling
    )
