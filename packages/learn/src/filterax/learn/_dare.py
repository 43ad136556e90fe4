r"""The steady-state Kalman gain: the discrete algebraic Riccati equation solved in JAX."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

import filterax.primitives as fxp

__all__ = ["SteadyStateGain", "steady_state_gain"]

_HIGHEST = jax.lax.Precision.HIGHEST


def _mm(a: Array, b: Array) -> Array:
    return jnp.matmul(a, b, precision=_HIGHEST)


class SteadyStateGain(eqx.Module):
    """What `steady_state_gain` returns.

    **Fields:**

    - `gain`: ``(N_x, N_y)`` the steady-state Kalman gain ``K_ss``.
    - `forecast_cov`: ``(N_x, N_x)`` the stabilising DARE solution ``Ĉ_ss`` (the steady
      forecast covariance).
    - `analysis_cov`: ``(N_x, N_x)`` ``(I - K_ss H) Ĉ_ss`` (the steady analysis covariance).
    - `iterations`: doubling steps taken.
    - `converged`: whether the relative change fell below the tolerance.
    """

    gain: Float[Array, "N_x N_y"]
    forecast_cov: Float[Array, "N_x N_x"]
    analysis_cov: Float[Array, "N_x N_x"]
    iterations: Int[Array, ""]
    converged: Bool[Array, ""]


def _matrix(x: Any, shape: tuple[int, int] | None, name: str, dtype: Any) -> Array:
    x = jnp.asarray(x)
    if x.ndim != 2 or (shape is not None and x.shape != shape):
        want = f"{shape}" if shape is not None else "a 2-D matrix"
        raise ValueError(f"steady_state_gain: {name} must have shape {want}; got {x.shape}.")
    return x.astype(dtype)


def steady_state_gain(
    A: Float[ArrayLike, "N_x N_x"],
    H: Float[ArrayLike, "N_y N_x"],
    Q: Any,
    R: Any,
    *,
    rtol: float | None = None,
    max_iterations: int = 64,
    throw: bool = True,
) -> SteadyStateGain:
    r"""The steady-state Kalman gain of ``x' = A x + N(0, Q)``, ``y = H x + N(0, R)``.

    ``Ĉ`` is the stabilising solution of the filtering DARE

    $$\hat C = A\hat C A^\top - A\hat C H^\top(H\hat C H^\top + R)^{-1}H\hat C A^\top + Q
    = A\hat C(I + G\hat C)^{-1}A^\top + Q,\quad G = H^\top R^{-1}H,$$

    and ``K_ss = Ĉ Hᵀ (H Ĉ Hᵀ + R)⁻¹``. Solved by the structured doubling algorithm (Chu, Fan
    & Lin 2005): ``A_0 = Aᵀ, G_0 = G, Q_0 = Q`` and

    $$W_k = I + G_k Q_k,\quad A_{k+1} = A_k W_k^{-1} A_k,\quad
    G_{k+1} = G_k + A_k W_k^{-1} G_k A_k^\top,\quad Q_{k+1} = Q_k + A_k^\top Q_k W_k^{-1} A_k,$$

    so ``Q_k`` is the Riccati iterate after ``2^k`` steps from ``Ĉ = Q`` (quadratic
    convergence; a ``lax.while_loop``, jit/vmap-safe; no scipy). It stops when
    ``‖Q_{k+1} - Q_k‖_F <= rtol ‖Q_{k+1}‖_F``.

    **Arguments:**

    - `A`: ``(N_x, N_x)`` the model matrix.
    - `H`: ``(N_y, N_x)`` the observation matrix.
    - `Q`, `R`: the process and observation noise covariances (anything
      `filterax.primitives.as_noise_operator` accepts; ``R`` positive definite). ``Q`` is
      symmetrised.
    - `rtol`: the stopping tolerance (default ``sqrt(eps)`` of the dtype: the convergence is
      quadratic, so the returned iterate, one step past it, is accurate to ``O(eps)``).
    - `max_iterations`: doubling steps at most (``2^64`` Riccati steps: never the limit for
      a detectable, stabilisable pair).
    - `throw`: raise (`eqx.error_if`, also under jit) if it did not converge or the result
      is not finite; with ``False`` read `SteadyStateGain.converged`.

    **Returns:** a `SteadyStateGain`.

    **Reference:** the reference gain of Bach, Baptista, Luk & Stuart (2025), §3.3 (the
    authors call ``scipy.linalg.solve_discrete_are(Aᵀ, Hᵀ, Σ, Γ)``); E.K.-W. Chu, H.-Y. Fan &
    W.-W. Lin (2005), *Linear Algebra Appl.* 396, 55-80.

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.learn import steady_state_gain

    ss = steady_state_gain(0.9 * jnp.eye(2), jnp.eye(2), 0.1, 1.0)
    ss.gain  # diagonal, ~0.30
    ```
    """
    A = jnp.asarray(A)
    dtype = jnp.result_type(A, H)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    A = _matrix(A, None, "A", dtype)
    n = A.shape[0]
    A = _matrix(A, (n, n), "A (square)", dtype)
    H = _matrix(H, None, "H", dtype)
    if H.shape[1] != n:
        raise ValueError(
            f"steady_state_gain: H must be (N_y, N_x) with N_x = {n} (A is {n} x {n}); got "
            f"{H.shape}."
        )
    m = H.shape[0]
    Qm = fxp.as_noise_operator(Q, n, dtype=dtype).as_matrix().astype(dtype)
    Qm = 0.5 * (Qm + Qm.T)
    Rm = fxp.as_noise_operator(R, m, dtype=dtype).as_matrix().astype(dtype)
    if rtol is None:
        # The change is measured after a step, and the error after it is about the square of
        # the change (quadratic convergence): sqrt(eps) leaves an O(eps) error.
        rtol = float(jnp.sqrt(jnp.finfo(dtype).eps))
    chol_r = jnp.linalg.cholesky(0.5 * (Rm + Rm.T))
    Rinv_H = jax.scipy.linalg.cho_solve((chol_r, True), H)
    G = _mm(H.T, Rinv_H)
    G = 0.5 * (G + G.T)
    eye = jnp.eye(n, dtype=dtype)

    def body(carry):
        Ak, Gk, Qk, _, k = carry
        W = eye + _mm(Gk, Qk)
        # W^{-1} A_k and W^{-1} G_k by one LU solve.
        sol = jnp.linalg.solve(W, jnp.concatenate([Ak, Gk], axis=1))
        WA, WG = sol[:, :n], sol[:, n:]
        A_next = _mm(Ak, WA)
        G_next = Gk + _mm(_mm(Ak, WG), Ak.T)
        Q_next = Qk + _mm(_mm(Ak.T, Qk), WA)
        G_next = 0.5 * (G_next + G_next.T)
        Q_next = 0.5 * (Q_next + Q_next.T)
        change = jnp.linalg.norm(Q_next - Qk) / jnp.maximum(jnp.linalg.norm(Q_next), 1e-300)
        return A_next, G_next, Q_next, change, k + 1

    def cond(carry):
        _, _, _, change, k = carry
        return (k < max_iterations) & (change > rtol)

    init = (A.T, G, Qm, jnp.asarray(jnp.inf, dtype), jnp.asarray(0, jnp.int32))
    _, _, P, change, k = jax.lax.while_loop(cond, body, init)
    S = _mm(_mm(H, P), H.T) + Rm
    gain = jnp.linalg.solve(0.5 * (S + S.T), _mm(H, P)).T
    analysis = _mm(eye - _mm(gain, H), P)
    converged = (change <= rtol) & jnp.all(jnp.isfinite(gain)) & jnp.all(jnp.isfinite(P))
    out = SteadyStateGain(gain, P, 0.5 * (analysis + analysis.T), k, converged)
    if throw:
        out = eqx.error_if(
            out,
            ~converged,
            "steady_state_gain: the Riccati doubling did not converge to a finite solution. "
            "(A, H) must be detectable and (A, Q^{1/2}) stabilisable, and R positive definite; "
            "pass throw=False to read .converged instead.",
        )
    return out
