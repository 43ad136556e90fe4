r"""The control-variable Gauss–Newton solver shared by the variational methods (3D/4D-Var, EnVar).

A variational analysis minimises, over the state ``x`` at the control time (the window start),

$$J(x) = \tfrac12 \lVert x - x_b\rVert^2_{B^{-1}}
       + \tfrac12 \sum_t \lVert y_t - \mathcal G_t(x)\rVert^2_{R^{-1}},$$

with ``\mathcal G_t = H_t \circ \mathcal M_{0 \to t}`` the observation of the model at time
``t``. With a square root ``B = U U^\top`` and ``x = x_b + U v`` (the *control-variable*
transform) no ``B^{-1}`` is needed, and ``U`` may be any linear map (rank-deficient, matrix-free):

$$J(v) = \tfrac12\lVert v\rVert^2 + \tfrac12\sum_t \lVert y_t - \mathcal G_t(x_b + U v)
\rVert^2_{R^{-1}} .$$

Incremental Gauss–Newton: at the iterate ``v_i`` (``x_i = x_b + U v_i``) with the innovation
``d_t = y_t - \mathcal G_t(x_i)`` and the tangent-linear map ``G_t = \mathcal G_t'(x_i)``, the
step ``\delta v`` minimises the quadratic

$$\tfrac12\lVert v_i + \delta v\rVert^2 + \tfrac12 \sum_t \lVert d_t - G_t U \delta v
\rVert^2_{R^{-1}},$$

i.e. it solves the normal equations (by conjugate gradients, `lineax.CG`, matrix-free)

$$\big(I + U^\top G^\top R^{-1} G U\big)\,\delta v = U^\top G^\top R^{-1} d - v_i .$$

``G`` comes from `jax.linearize` of the forward map and ``G^\top`` from `jax.linear_transpose`
of the whole whitened map (no hand-written adjoint); for forward maps without forward-mode
autodiff (the zoo's stepped models over a traced interval run a checkpointed loop with a
custom VJP) the rows of ``G`` come from `jax.vjp` instead (``jacobian="rev"``: one pullback per
observed component, then ``G`` is a dense ``(T N_y, N_x)`` matrix).

Missing observations (NaN entries of ``y_t``) have zero weight: their rows of ``R^{-1/2}``
and innovation are zero (`filterax.primitives.mask_noise`), shapes unchanged.

**References:** P. Courtier, J.-N. Thépaut & A. Hollingsworth (1994), "A strategy for
operational implementation of 4D-Var, using an incremental approach", QJRMS 120, 1367–1387;
A. C. Lorenc (1988), "Optimal nonlinear objective analysis", QJRMS 114, 205–240 (the
control-variable transform); M. R. Hestenes & E. Stiefel (1952), conjugate gradients.
DAPPER's ``Var4D`` forms the same Gauss–Newton step densely (``Cow1 @ grad``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree, Real

import filterax.primitives as fxp

__all__ = [
    "VariationalResult",
    "background_sqrt",
    "variational_analysis",
    "variational_cost",
    "variational_increment",
]

_JACOBIANS = ("fwd", "rev")


# --- the background square root ---------------------------------------------------------------


def _is_concrete(x: Any) -> bool:
    return fxp.concrete_value(x) is not None


def background_sqrt(
    B: Any = None, *, B_sqrt: Any = None, where: str = "background_sqrt"
) -> lx.AbstractLinearOperator:
    r"""A square root ``U`` (``B = U U^\top``) of a background covariance, as a lineax operator.

    - `B` a vector of variances ``(N_x,)`` or a diagonal lineax operator: ``U = diag(\sqrt b)``
      (nothing dense is formed);
    - `B` an ``(N_x, N_x)`` matrix or another lineax operator: ``U`` = its lower Cholesky factor
      (dense; for a large structured ``B`` give `B_sqrt` instead);
    - `B_sqrt` an ``(N_x, N_v)`` matrix or any lineax operator ``U`` (matrix-free, possibly
      rank-deficient: ``N_v < N_x`` is a reduced control space): used as is.

    **Raises:** `ValueError` for a concrete `B` that is not symmetric positive definite (NaN,
    a negative variance, a singular matrix: ``B^{-1}`` does not exist; give a rank-deficient
    ``B`` through its square root ``B_sqrt``), wrong shapes, or both/neither of `B` and
    `B_sqrt`.
    """
    if (B is None) == (B_sqrt is None):
        raise ValueError(
            f"{where}: give exactly one of B (a covariance: (N_x, N_x) matrix, (N_x,) "
            "variances or a lineax operator) and B_sqrt (its square root U, B = U U^T)."
        )
    if B_sqrt is not None:
        if isinstance(B_sqrt, np.ndarray | jax.Array):
            B_sqrt = jnp.asarray(B_sqrt)
            if B_sqrt.ndim != 2:
                raise ValueError(
                    f"{where}: B_sqrt must be an (N_x, N_v) matrix or a lineax operator; got "
                    f"shape {B_sqrt.shape}."
                )
            if _is_concrete(B_sqrt) and not np.all(np.isfinite(np.asarray(B_sqrt))):
                raise ValueError(f"{where}: B_sqrt has NaN/inf entries; pass a finite matrix.")
            return lx.MatrixLinearOperator(B_sqrt)
        if isinstance(B_sqrt, lx.AbstractLinearOperator):
            return B_sqrt
        raise TypeError(
            f"{where}: B_sqrt must be an (N_x, N_v) matrix or a lineax operator; got "
            f"{type(B_sqrt).__name__}."
        )
    if isinstance(B, lx.AbstractLinearOperator):
        if B.in_size() != B.out_size():
            raise ValueError(f"{where}: B must be square; got {B.out_size()} x {B.in_size()}.")
        if lx.is_diagonal(B):
            B = lx.diagonal(B)
        else:
            B = B.as_matrix()
    if not isinstance(B, np.ndarray | jax.Array | list | tuple):
        raise TypeError(
            f"{where}: B must be an (N_x, N_x) matrix, an (N_x,) vector of variances or a "
            f"lineax operator; got {type(B).__name__}."
        )
    B = jnp.asarray(B)
    if not jnp.issubdtype(B.dtype, jnp.floating):
        B = B.astype(jnp.result_type(float))
    concrete = fxp.concrete_value(B)
    if B.ndim == 1:
        if concrete is not None and not (np.all(np.isfinite(concrete)) and np.all(concrete > 0)):
            raise ValueError(
                f"{where}: the background variances must be finite and > 0 (B^{{-1}} must "
                f"exist); got min {np.nanmin(concrete) if concrete.size else 'empty'} and "
                f"{int(np.sum(~np.isfinite(concrete)))} non-finite. Give a rank-deficient B "
                "through B_sqrt."
            )
        return lx.DiagonalLinearOperator(jnp.sqrt(B))
    if B.ndim != 2 or B.shape[0] != B.shape[1]:
        raise ValueError(
            f"{where}: B must be an (N_x, N_x) matrix or (N_x,) variances; got shape {B.shape}."
        )
    if concrete is not None:
        if not np.all(np.isfinite(concrete)):
            raise ValueError(f"{where}: B has NaN/inf entries; pass a finite covariance.")
        sym = 0.5 * (concrete + concrete.T)
        if not np.allclose(concrete, concrete.T, rtol=1e-6, atol=1e-12 * np.abs(sym).max()):
            raise ValueError(f"{where}: B must be symmetric; got an asymmetric matrix.")
        eig = np.linalg.eigvalsh(sym)
        # A covariance estimated from fewer samples than N_x, or with exact linear relations,
        # has zero eigenvalues up to round-off: its inverse, which the 3D/4D-Var cost uses,
        # does not exist.
        if eig[0] <= 1e3 * np.finfo(sym.dtype).eps * max(eig[-1], 0.0) or eig[-1] <= 0:
            raise ValueError(
                f"{where}: B is singular or not positive definite (eigenvalues from {eig[0]:.3g} "
                f"to {eig[-1]:.3g}); the variational cost needs B^{{-1}}. Regularise it (e.g. "
                "B + eps I), or give a rank-deficient B through its square root B_sqrt=U (then "
                "the analysis stays in the range of U)."
            )
    sym = 0.5 * (B + B.T)
    return lx.MatrixLinearOperator(jnp.linalg.cholesky(sym), lx.lower_triangular_tag)


# --- control vectors are PyTrees -------------------------------------------------------------
# The control space of U may be any PyTree of arrays (e.g. EnVar's (v_c, v_e) of the static and
# ensemble parts), as lineax operators allow; these keep the solver free of special cases.


def _tree_add(a: Any, b: Any) -> Any:
    return jax.tree.map(jnp.add, a, b)


def _tree_sub(a: Any, b: Any) -> Any:
    return jax.tree.map(jnp.subtract, a, b)


def _tree_dot(a: Any, b: Any) -> Array:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return functools.reduce(jnp.add, [jnp.sum(x * y) for x, y in leaves])


def _tree_size(a: Any) -> int:
    return sum(int(np.size(x)) for x in jax.tree.leaves(a))


def _tree_dtype(a: Any, *more: Any) -> Any:
    return jnp.result_type(*(x.dtype for x in jax.tree.leaves(a)), *more)


def _tree_zeros(structure: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda s: jnp.zeros(s.shape, dtype), structure)


def _as_linear_fn(sqrt_cov: Any) -> tuple[Callable[[Array], Array], Any]:
    """``(v -> U v, control structure or None)`` for a lineax operator, a matrix or a callable."""
    if isinstance(sqrt_cov, np.ndarray | jax.Array):
        sqrt_cov = lx.MatrixLinearOperator(jnp.asarray(sqrt_cov))
    if isinstance(sqrt_cov, lx.AbstractLinearOperator):
        return sqrt_cov.mv, sqrt_cov.in_structure()
    if callable(sqrt_cov):
        return sqrt_cov, None
    raise TypeError(
        "sqrt_cov (U, B = U U^T) must be a lineax operator, a matrix or a linear callable "
        f"v -> U v; got {type(sqrt_cov).__name__}."
    )


# --- masked whitening ------------------------------------------------------------------------


def _check_observations(observations: Any) -> Array:
    observations = jnp.asarray(observations)
    if observations.ndim != 2 or observations.shape[1] < 1 or observations.shape[0] < 1:
        raise ValueError(
            "observations must be a (T, N_y) array: one row per observation time of the window "
            f"(T = 1 for 3D-Var), NaN where missing; got shape {observations.shape}."
        )
    if not jnp.issubdtype(observations.dtype, jnp.floating):
        observations = observations.astype(jnp.result_type(float))
    concrete = fxp.concrete_value(observations)
    if concrete is not None and np.all(np.isnan(concrete)):
        raise ValueError(
            "the window has no observation (every entry is NaN): a variational analysis "
            "would return the background unchanged. Pass a window with at least one observed "
            "component."
        )
    return observations


def _whitener(
    obs_noise: Any, observations: Array, dtype: Any
) -> tuple[Callable[[Array], Array], Bool[Array, "T N_y"]]:
    """``W`` (rows of residuals -> whitened rows, zero at missing entries) and the mask."""
    n_y = observations.shape[1]
    noise = fxp.positive_definite_noise(obs_noise, n_y, dtype=dtype, name="obs_noise")
    mask = jax.vmap(fxp.observation_mask)(observations)
    whitenings = jax.vmap(lambda m: fxp.noise_whitening(fxp.mask_noise(noise, m), dtype))(mask)

    def whiten(residuals: Array) -> Array:
        def row(wh, r, m):
            return jnp.where(m, wh.vector(jnp.where(m, r, 0.0)), 0.0)

        return jax.vmap(row)(whitenings, residuals, mask)

    return whiten, mask


def _innovation(observations: Array, predicted: Array, mask: Array) -> Array:
    # NaN replaced before subtracting, so neither values nor gradients can pick it up.
    return jnp.where(mask, jnp.where(mask, observations, 0.0) - predicted, 0.0)


def _forward_rows(forward: Callable[[Array], Array], x: Array, shape: tuple[int, ...]) -> Array:
    out = jnp.asarray(forward(x))
    if out.shape != shape:
        raise ValueError(
            f"forward(x) must return the predicted observations with the shape of observations "
            f"{shape}; got {out.shape}. For one observation time return y[None, :]."
        )
    return out.astype(x.dtype)


def _linearize(
    forward: Callable[[Array], Array], x: Array, shape: tuple[int, ...], jacobian: str
) -> tuple[Array, Callable[[Array], Array]]:
    """``(forward(x), G)`` with ``G`` the tangent-linear map at ``x`` (see the module docstring)."""

    def fwd(z):
        return _forward_rows(forward, z, shape)

    if jacobian == "fwd":
        return jax.linearize(fwd, x)
    # The zoo's stepped models over a traced interval only have a custom VJP (no jvp).
    predicted, pullback = jax.vjp(fwd, x)
    n_out = int(np.prod(shape))
    eye = jnp.eye(n_out, dtype=x.dtype).reshape((n_out, *shape))
    (rows,) = jax.vmap(pullback)(eye)  # (T N_y, N_x): the Jacobian, row by row

    def lin(dx):
        return fxp.matmul(rows, dx).reshape(shape)

    return predicted, lin


# --- the inner solve -------------------------------------------------------------------------


def _default_rtol(dtype: Any) -> float:
    # float64: 1e-10 relative residual, so that v is exact to ~1e-10 (the normal matrix has
    # eigenvalues >= 1, so the error in v is at most the residual); float32: 1e-5.
    return 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-5


class _IncrementStats(eqx.Module):
    steps: Int[Array, ""]
    converged: Bool[Array, ""]


def variational_increment(
    linear_map: Callable[[Float[Array, " N_x"]], Float[Array, "T N_y"]],
    sqrt_cov: Any,
    innovation: Float[ArrayLike, "T N_y"],
    obs_noise: Any,
    control: PyTree[Float[ArrayLike, "..."]] | None = None,
    *,
    rtol: float | None = None,
    atol: float = 0.0,
    max_steps: int | None = None,
) -> tuple[PyTree[Float[Array, "..."]], Int[Array, ""], Bool[Array, ""]]:
    r"""One Gauss–Newton (incremental) step of a variational cost in control-variable form.

    Solves, by conjugate gradients (`lineax.CG`, matrix-free, never forming a matrix),

    $$\big(I + U^\top G^\top R^{-1} G U\big)\,\delta v = U^\top G^\top R^{-1} d - v,$$

    the minimiser of ``\tfrac12\lVert v + \delta v\rVert^2 + \tfrac12\sum_t\lVert d_t - G_t U
    \delta v\rVert^2_{R^{-1}}``. ``G^\top`` is `jax.linear_transpose` of ``G`` (with the
    whitening and ``U``): `linear_map` must be linear (e.g. from `jax.linearize`).

    **Arguments:**

    - `linear_map`: ``G``, ``dx (N_x,) -> (T, N_y)`` (the tangent-linear observation of the
      model at each observation time of the window).
    - `sqrt_cov`: ``U`` with ``B = U U^\top``: a lineax operator, an ``(N_x, N_v)`` matrix or a
      linear callable (then give `control`).
    - `innovation`: ``d``, ``(T, N_y)``; NaN entries are missing (zero weight).
    - `obs_noise`: ``R`` of every row (scalar variance, variances, matrix or lineax operator).
    - `control`: the current control ``v`` (default 0, the quadratic cost of the task). The
      control space may be any PyTree of arrays (the input structure of `sqrt_cov`, e.g. a
      `lineax.FunctionLinearOperator` on a tuple ``(v_c, v_e)``): the increment has the same
      structure.
    - `rtol`, `atol`, `max_steps`: CG stopping rule (``\lVert r\rVert \le atol + rtol
      \lVert b\rVert``); default `rtol` ``1e-10`` in float64, ``1e-5`` in float32; default
      `max_steps` ``N_v + 10`` (``N_v`` the total control size; CG is exact in ``N_v`` steps
      in exact arithmetic).

    **Returns:** ``(delta_v, cg_steps, converged)``.

    **Example:**

    ```python
    import jax.numpy as jnp, lineax as lx
    from filterax.zoo import variational_increment

    U = lx.DiagonalLinearOperator(jnp.full(3, 2.0))          # B = 4 I
    dv, steps, ok = variational_increment(lambda dx: dx[None], U, jnp.ones((1, 3)), 1.0)
    U.mv(dv)   # the 3D-Var increment B (B + R)^{-1} d = 0.8
    ```
    """
    innovation = _check_observations(innovation)
    apply_u, structure = _as_linear_fn(sqrt_cov)
    if control is None:
        if structure is None:
            raise ValueError(
                "variational_increment: with a callable sqrt_cov, give control (e.g. zeros of "
                "the control-space size) so the control space is known."
            )
        control = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), structure)
    control = jax.tree.map(jnp.asarray, control)
    dtype = _tree_dtype(control, innovation.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    control = jax.tree.map(lambda x: x.astype(dtype), control)
    whiten, mask = _whitener(obs_noise, innovation, dtype)
    d = _innovation(innovation.astype(dtype), jnp.zeros_like(innovation, dtype), mask)
    delta, stats = _solve(linear_map, apply_u, whiten, d, control, rtol, atol, max_steps)
    return delta, stats.steps, stats.converged


def _solve(
    linear_map: Callable[[Array], Array],
    apply_u: Callable[[Any], Array],
    whiten: Callable[[Array], Array],
    d: Array,
    control: PyTree[Array],
    rtol: float | None,
    atol: float,
    max_steps: int | None,
) -> tuple[PyTree[Array], _IncrementStats]:
    dtype = _tree_dtype(control)

    def whitened_map(v):
        return whiten(jnp.asarray(linear_map(apply_u(v))).astype(dtype))

    transpose = jax.linear_transpose(whitened_map, control)

    def normal(v):
        (back,) = transpose(whitened_map(v))
        return _tree_add(v, back)

    (rhs,) = transpose(whiten(d))
    rhs = _tree_sub(rhs, control)
    n_v = _tree_size(control)
    operator = lx.FunctionLinearOperator(
        normal,
        jax.eval_shape(lambda: control),
        (lx.symmetric_tag, lx.positive_semidefinite_tag),
    )
    solver = lx.CG(
        rtol=_default_rtol(dtype) if rtol is None else rtol,
        atol=atol,
        max_steps=n_v + 10 if max_steps is None else max_steps,
    )
    sol = lx.linear_solve(operator, rhs, solver, throw=False)
    steps = jnp.asarray(sol.stats["num_steps"], jnp.int32)
    return sol.value, _IncrementStats(steps, sol.result == lx.RESULTS.successful)


# --- the Gauss–Newton outer loop --------------------------------------------------------------


class VariationalResult(eqx.Module):
    r"""What `variational_analysis` returns.

    **Fields:**

    - `analysis`: ``(N_x,)`` the minimiser ``x_a = x_b + U v`` at the control time.
    - `control`: ``(N_v,)`` ``v`` (a PyTree of the same structure when `sqrt_cov` acts on
      one).
    - `iterations`: Gauss–Newton iterations done (``< n_iter`` when `wtol` stopped early).
    - `cg_steps`: CG steps summed over the iterations.
    - `converged`: every inner CG solve met its tolerance (``False``: raise `max_steps` or
      relax `rtol`; the analysis is then an inexact minimiser).
    - `innovation_statistic`: ``d_0^\top (G_0 B G_0^\top + R)^{-1} d_0`` at the background
      (first iteration, Woodbury: ``\lVert W d_0\rVert^2 - b_0^\top \delta v_0``), the
      quadratic part of the background's Gaussian log-likelihood.
    - `n_observed`: the number of observed (non-NaN) entries.
    """

    analysis: Float[Array, " N_x"]
    control: PyTree[Float[Array, "..."]]
    iterations: Int[Array, ""]
    cg_steps: Int[Array, ""]
    converged: Bool[Array, ""]
    innovation_statistic: Real[Array, ""]
    n_observed: Int[Array, ""]


def _check_jacobian(jacobian: str) -> None:
    if jacobian not in _JACOBIANS:
        raise ValueError(
            f"jacobian must be one of {_JACOBIANS} ('fwd': jax.linearize, matrix-free; 'rev': "
            f"the rows of the Jacobian from jax.vjp, for maps without forward-mode autodiff "
            f"such as the zoo's stepped models over a traced interval); got {jacobian!r}."
        )


def _check_n_iter(n_iter: Any, wtol: Any) -> None:
    if isinstance(n_iter, bool) or not isinstance(n_iter, int | np.integer) or n_iter < 1:
        raise ValueError(
            f"n_iter must be a Python int >= 1 (Gauss–Newton iterations); got {n_iter!r}."
        )
    if isinstance(wtol, bool) or not isinstance(wtol, int | float) or not 0 <= wtol < np.inf:
        raise ValueError(
            f"wtol must be a finite Python float >= 0 (stop once |dv|^2 < wtol N_v; 0 runs "
            f"every iteration); got {wtol!r}."
        )


def variational_analysis(
    forward: Callable[[Float[Array, " N_x"]], Float[Array, "T N_y"]],
    background: Float[ArrayLike, " N_x"],
    sqrt_cov: Any,
    observations: Float[ArrayLike, "T N_y"],
    obs_noise: Any,
    *,
    n_iter: int = 1,
    wtol: float = 0.0,
    jacobian: str = "fwd",
    rtol: float | None = None,
    atol: float = 0.0,
    max_steps: int | None = None,
) -> VariationalResult:
    r"""Minimise a variational cost by incremental Gauss–Newton in control-variable form.

    $$J(v) = \tfrac12\lVert v\rVert^2 + \tfrac12\sum_t \lVert y_t - \mathcal G_t(x_b + U v)
    \rVert^2_{R^{-1}},\qquad B = U U^\top,$$

    $$v_{i+1} = v_i + \delta v_i,\qquad \big(I + U^\top G_i^\top R^{-1} G_i U\big)\,\delta v_i
    = U^\top G_i^\top R^{-1}\big(y - \mathcal G(x_b + U v_i)\big) - v_i,$$

    each inner system solved by `variational_increment` (lineax CG), ``G_i`` the
    tangent-linear map of `forward` at ``x_b + U v_i``. With a linear `forward` one iteration
    is the exact minimiser (the Kalman/BLUE analysis); `n_iter` Gauss–Newton iterations run
    (`lax.scan`; once ``\lVert\delta v\rVert^2 < wtol\,N_v`` the remaining ones are skipped,
    DAPPER's ``wtol``), so the result is reverse-differentiable.

    **Arguments:**

    - `forward`: ``x (N_x,) -> (T, N_y)``, the observations predicted at the window's ``T``
      observation times from the state at the control time (``H(x)[None]`` for 3D-Var,
      ``H_t(M_{0\to t}(x))`` stacked for 4D-Var).
    - `background`: ``x_b``, ``(N_x,)``.
    - `sqrt_cov`: ``U`` (``B = U U^\top``): a lineax operator, a matrix or a linear callable
      (see `background_sqrt` to build one from ``B``).
    - `observations`: ``(T, N_y)``, NaN where missing (zero weight).
    - `obs_noise`: ``R`` of each observation time.
    - `n_iter`, `wtol`: Gauss–Newton iterations and early-stopping tolerance.
    - `jacobian`: ``"fwd"`` (`jax.linearize`: matrix-free, any size) or ``"rev"`` (the
      ``T N_y`` rows of the Jacobian from `jax.vjp`: for a `forward` without forward-mode
      autodiff, e.g. the zoo's stepped models over a traced interval, as inside
      `filterax.filters.run`).
    - `rtol`, `atol`, `max_steps`: the CG stopping rule (`variational_increment`).

    **Returns:** a `VariationalResult`.

    **Reference:** Courtier, Thépaut & Hollingsworth (1994), QJRMS 120 (incremental 4D-Var);
    DAPPER ``dapper.da_methods.variational.Var4D`` (the same Gauss–Newton step, dense).

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.zoo import background_sqrt, variational_analysis

    U = background_sqrt(jnp.array([[2.0, 0.5], [0.5, 1.0]]))
    res = variational_analysis(lambda x: x[None, :1] ** 3, jnp.ones(2), U,
                               jnp.array([[2.0]]), 0.1, n_iter=10)
    res.analysis
    ```
    """
    _check_jacobian(jacobian)
    _check_n_iter(n_iter, wtol)
    observations = _check_observations(observations)
    background = jnp.asarray(background)
    if background.ndim != 1:
        raise ValueError(f"background must be a state vector (N_x,); got shape {background.shape}.")
    dtype = jnp.result_type(background.dtype, observations.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    background = background.astype(dtype)
    observations = observations.astype(dtype)
    apply_u, structure = _as_linear_fn(sqrt_cov)
    if structure is None:
        raise TypeError(
            "variational_analysis: sqrt_cov must be a lineax operator or a matrix (its input "
            "structure fixes the control space); wrap a callable in "
            "lineax.FunctionLinearOperator(fn, jax.ShapeDtypeStruct((N_v,), dtype))."
        )
    control0 = _tree_zeros(structure, dtype)
    probe = jax.eval_shape(lambda v: apply_u(v), control0)
    if probe.shape != background.shape:
        raise ValueError(
            f"sqrt_cov maps the control space to shape {probe.shape}, but the background has "
            f"shape {background.shape}; U must be (N_x, N_v) with N_x = {background.shape[0]}."
        )
    shape = observations.shape
    whiten, mask = _whitener(obs_noise, observations, dtype)
    n_v = _tree_size(control0)

    def gn_step(v):
        x = background + apply_u(v).astype(dtype)
        predicted, lin = _linearize(forward, x, shape, jacobian)
        d = _innovation(observations, predicted, mask)
        delta, stats = _solve(lin, apply_u, whiten, d, v, rtol, atol, max_steps)
        return delta, stats, d, lin

    # The first iteration also gives the background's innovation statistic.
    delta0, stats0, d0, lin0 = gn_step(control0)
    wd0 = whiten(d0)

    def whitened_map0(v):
        return whiten(jnp.asarray(lin0(apply_u(v))).astype(dtype))

    (b0,) = jax.linear_transpose(whitened_map0, control0)(wd0)
    statistic = jnp.sum(wd0**2) - _tree_dot(b0, delta0)
    v1 = _tree_add(control0, delta0)
    done0 = _tree_dot(delta0, delta0) < wtol * n_v

    def body(carry, _):
        v, iters, steps, ok, done = carry

        def skip(v):
            return v, _IncrementStats(jnp.asarray(0, jnp.int32), jnp.asarray(True))

        def do(v):
            delta, stats, _, _ = gn_step(v)
            return _tree_add(v, delta), stats

        v_new, stats = lax.cond(done, skip, do, v)
        step = _tree_sub(v_new, v)
        small = _tree_dot(step, step) < wtol * n_v
        iters = iters + jnp.where(done, 0, 1).astype(jnp.int32)
        return (v_new, iters, steps + stats.steps, ok & stats.converged, done | small), None

    carry = (v1, jnp.asarray(1, jnp.int32), stats0.steps, stats0.converged, done0)
    if n_iter > 1:
        carry, _ = lax.scan(body, carry, None, length=n_iter - 1)
    v, iters, steps, ok, _ = carry
    return VariationalResult(
        analysis=background + apply_u(v).astype(dtype),
        control=v,
        iterations=iters,
        cg_steps=steps,
        converged=ok,
        innovation_statistic=statistic,
        n_observed=jnp.sum(mask).astype(jnp.int32),
    )


def variational_cost(
    forward: Callable[[Float[Array, " N_x"]], Float[Array, "T N_y"]],
    background: Float[ArrayLike, " N_x"],
    sqrt_cov: Any,
    observations: Float[ArrayLike, "T N_y"],
    obs_noise: Any,
    control: PyTree[Float[ArrayLike, "..."]],
) -> Real[Array, ""]:
    r"""The control-variable cost ``J(v) = \tfrac12\lVert v\rVert^2 + \tfrac12\sum_t\lVert y_t -
    \mathcal G_t(x_b + U v)\rVert^2_{R^{-1}}`` (NaN observations have zero weight).

    Differentiable in every argument (`jax.grad` w.r.t. `control` is the gradient the
    Gauss–Newton solver zeroes; w.r.t. `observations` the sensitivity to the data).
    """
    observations = _check_observations(observations)
    control = jax.tree.map(jnp.asarray, control)
    background = jnp.asarray(background)
    dtype = _tree_dtype(control, background.dtype, observations.dtype)
    control = jax.tree.map(lambda v: v.astype(dtype), control)
    apply_u, _ = _as_linear_fn(sqrt_cov)
    whiten, mask = _whitener(obs_noise, observations, dtype)
    x = background.astype(dtype) + apply_u(control).astype(dtype)
    predicted = _forward_rows(forward, x, observations.shape)
    d = _innovation(observations.astype(dtype), predicted, mask)
    return 0.5 * _tree_dot(control, control) + 0.5 * jnp.sum(whiten(d) ** 2)
