"""What the inverse-problem smoothers (`ESMDA`, `IES`) share: state, result, noise, driver.

- The observation noise ``Gamma`` (scalar, variances, matrix or lineax operator) is whitened
  once: ``Gamma = L L^T`` with ``L`` diagonal (diagonal ``Gamma``, or the diagonal part of a
  low-rank-plus-diagonal one) or the dense Cholesky factor. What remains of a low-rank
  ``Gamma = D + U U^T`` is ``N = I + U~ U~^T`` with ``U~ = L^{-1} U``. Every solve then goes
  through ``(I + F F^T)^{-1}`` in the smaller of the ``N_y`` and ``N_e (+ k)`` spaces, so an
  update costs ``O(N_e^2 N_y)`` (linear in the data dimension) unless ``Gamma`` is dense.
- A smoother is an `AbstractInverseSmoother`: ``init(key, prior_ensemble, obs, obs_noise)``,
  ``update(state, forward_evals)`` and the concrete driver ``run`` (one ``lax.scan`` inside
  ``eqx.filter_jit``, the forward model vmapped over the members).
"""

# No `from __future__ import annotations`: equinox needs evaluated `AbstractVar` annotations.
import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

import filterax.primitives as fxp

__all__ = ["AbstractInverseSmoother", "InversionResult", "InversionState"]

_HIGHEST = lax.Precision.HIGHEST


def mm(a: Array, b: Array) -> Array:
    # Explicit precision: on GPUs the default may be TF32, far too coarse for covariances.
    return jnp.matmul(a, b, precision=_HIGHEST)


# --- state and result ------------------------------------------------------------------------


class InversionState(eqx.Module):
    """What `ESMDA` and `IES` carry from one update to the next.

    `init` builds it and `update` returns the next one; `run` carries it through a
    ``lax.scan``, so its structure never changes between updates.

    **Fields:**

    - `ensemble`: the current ``(N_e, N_p)`` parameter ensemble (where to evaluate ``G`` next).
    - `prior`: the prior ensemble ``theta^0`` given to `init`.
    - `obs`: the observation ``y``, shape ``(N_y,)``.
    - `obs_noise`: ``Gamma`` as a lineax operator.
    - `perturbations`: ``(N_e, N_y)`` draws ``epsilon_j ~ N(0, Gamma)``. `IES` draws them once
      in `init` (``d_j = y + epsilon_j``); `ESMDA` draws new ones at every update and keeps
      those of the last update here (zeros before the first), unscaled by ``sqrt(alpha_i)``.
    - `key`: the PRNG key; update ``i`` of `ESMDA` draws from ``jax.random.fold_in(key, i)``.
    - `iteration`: the number of updates taken.
    - `weights`: `IES`'s ``(N_e, N_e)`` coefficient matrix ``W`` (``theta_j = theta^0_j +
      (A_0 W)_j / sqrt(N_e - 1)``); ``None`` for `ESMDA`.
    - `n_failed`: members whose forward evaluation was non-finite in the last update (only
      non-zero with ``throw=False``, when that update was skipped).
    """

    ensemble: Float[Array, "N_e N_p"]
    prior: Float[Array, "N_e N_p"]
    obs: Float[Array, " N_y"]
    obs_noise: lx.AbstractLinearOperator
    perturbations: Float[Array, "N_e N_y"]
    key: PRNGKeyArray
    iteration: Int[Array, ""]
    weights: Float[Array, "N_e N_e"] | None
    n_failed: Int[Array, ""]


class InversionResult(eqx.Module):
    """What `ESMDA.run` and `IES.run` return (``n`` = number of updates).

    **Fields:**

    - `ensemble`: the final ``(N_e, N_p)`` ensemble.
    - `history`: ``(n + 1, N_e, N_p)`` the prior ensemble, then the ensemble after each update.
    - `forward_history`: ``(n, N_e, N_y)`` ``G(theta_j)`` of ``history[k]``, the evaluations
      update ``k`` used (the final ensemble is not evaluated).
    - `misfit`: ``(n,)`` the mean over members of ``1/2 ||Gamma^{-1/2}(G(theta_j) - y)||^2`` of
      ``history[k]`` (against ``y`` itself, not the perturbed observations).
    - `n_forward_evaluations`: ``n * N_e``, the forward-model calls made.
    - `state`: the final `InversionState` (to continue with ``update``).
    """

    ensemble: Float[Array, "N_e N_p"]
    history: Float[Array, "n1 N_e N_p"]
    forward_history: Float[Array, "n N_e N_y"]
    misfit: Float[Array, " n"]
    n_forward_evaluations: int = eqx.field(static=True)
    state: InversionState


# --- input checks ----------------------------------------------------------------------------


def _concrete(x: Any) -> np.ndarray | None:
    try:
        return np.asarray(x)
    except Exception:  # a tracer: cannot be checked at trace time
        return None


def float_dtype(x: Any, name: str) -> jnp.dtype:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a floating-point array; got dtype {dtype}. Cast it with "
            ".astype(jnp.float32) or .astype(jnp.float64)."
        )
    return jnp.dtype(dtype)


def check_ensemble(x: Any, name: str) -> Array:
    shape = jnp.shape(x)
    if len(shape) != 2:
        raise ValueError(
            f"{name} must be a 2-D (N_e, N_p) ensemble with the members along axis 0; got "
            f"shape {shape}."
        )
    if shape[0] < 2:
        raise ValueError(
            f"{name} has N_e={shape[0]} members; ensemble statistics need at least 2 (the "
            "covariances divide by N_e - 1). Pass more members."
        )
    float_dtype(x, name)
    return jnp.asarray(x)


def check_obs(obs: Any, name: str, dtype: jnp.dtype) -> Array:
    shape = jnp.shape(obs)
    if len(shape) != 1 or shape[0] < 1:
        raise ValueError(
            f"{name} must be a non-empty 1-D observation vector (N_y,); got shape {shape}."
        )
    values = _concrete(obs)
    if values is not None and not np.all(np.isfinite(values)):
        raise ValueError(
            f"{name} has non-finite entries; the inverse-problem smoothers need every "
            "observation. Drop the missing entries (and the matching rows of G and Gamma)."
        )
    return jnp.asarray(obs).astype(dtype)


def checked_noise(noise: Any, n: int, dtype: jnp.dtype, name: str) -> lx.AbstractLinearOperator:
    """Coerce ``Gamma`` to a lineax operator of size ``n`` and check it is positive definite.

    Only concrete values can be checked; traced operators pass through.
    """
    hint = (
        " Pass a scalar variance, a 1-D array of N_y variances, an (N_y, N_y) covariance "
        "matrix or a lineax operator of size N_y."
    )
    try:
        op = fxp.as_noise_operator(noise, n, dtype=dtype)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{name}: {err}{hint}") from None
    structure = fxp.noise_structure(op)
    if structure == "low_rank":
        assert isinstance(op, fxp.LowRankUpdate)
        if op.diagonal is None:
            raise ValueError(
                f"{name} is a low-rank covariance U U^T without a diagonal, which is singular. "
                "Pass low_rank_noise(factor, diagonal) with positive variances."
            )
        values = _concrete(op.diagonal)
        if values is not None and values.min() <= 0:
            raise ValueError(
                f"{name} must be positive definite; its diagonal has the value "
                f"{values.min():.3g}. Pass strictly positive variances."
            )
    elif structure == "diagonal":
        values = _concrete(lx.diagonal(op))
        if values is not None and values.min() <= 0:
            raise ValueError(
                f"{name} must be positive definite; it has the variance {values.min():.3g}. "
                "Pass strictly positive variances (a zero variance cannot be whitened)."
            )
    else:
        matrix = _concrete(op.as_matrix())
        if matrix is not None:
            eigenvalues = np.linalg.eigvalsh(0.5 * (matrix + matrix.T))
            if eigenvalues.min() <= 0:
                raise ValueError(
                    f"{name} must be a positive-definite covariance; its smallest eigenvalue "
                    f"is {eigenvalues.min():.3g}. Add a small jitter to the diagonal, or pass "
                    "the variances of a diagonal covariance."
                )
    return op


def check_forward_evals(forward_evals: Any, n_ensemble: int, n_obs: int, dtype: Any) -> Array:
    shape = jnp.shape(forward_evals)
    if shape != (n_ensemble, n_obs):
        raise ValueError(
            f"forward_evals must have shape (N_e, N_y) = ({n_ensemble}, {n_obs}): one row "
            f"G(theta_j) per member of state.ensemble; got shape {shape}."
        )
    return jnp.asarray(forward_evals).astype(dtype)


def check_key(key: Any, name: str) -> None:
    if not isinstance(key, jax.Array):
        raise TypeError(f"{name} must be a JAX PRNG key, e.g. jax.random.key(0); got {key!r}.")


# --- whitening -------------------------------------------------------------------------------


class Whitening(eqx.Module):
    """``L^{-1}`` for ``Gamma = L L^T`` (``+ L U~ U~^T L^T`` when low-rank plus diagonal).

    In whitened coordinates the noise covariance is ``N = I + U~ U~^T`` (``N = I`` unless
    ``Gamma`` is low-rank plus diagonal, `factor` = ``U~``).
    """

    inv_sqrt_diag: Array | None
    chol: Array | None
    factor: Array | None

    @classmethod
    def build(cls, op: lx.AbstractLinearOperator, dtype: Any) -> "Whitening":
        structure = fxp.noise_structure(op)
        if structure == "dense":
            matrix = jnp.asarray(op.as_matrix(), dtype=dtype)
            return cls(None, jnp.linalg.cholesky(0.5 * (matrix + matrix.T)), None)
        if structure == "low_rank":
            assert isinstance(op, fxp.LowRankUpdate)
            inv = 1.0 / jnp.sqrt(jnp.asarray(op.diagonal, dtype=dtype))
            return cls(inv, None, jnp.asarray(op.factor, dtype=dtype) * inv[:, None])
        diag = jnp.asarray(lx.diagonal(op), dtype=dtype)
        return cls(1.0 / jnp.sqrt(diag), None, None)

    def white(self, x: Array) -> Array:
        """``L^{-1}`` applied along the last axis of a 1-D or 2-D array."""
        if self.chol is None:
            assert self.inv_sqrt_diag is not None
            return x * (self.inv_sqrt_diag if x.ndim == 1 else self.inv_sqrt_diag[None, :])
        if x.ndim == 1:
            return jsl.solve_triangular(self.chol, x, lower=True)
        return jsl.solve_triangular(self.chol, x.T, lower=True).T

    def misfits(self, forward_evals: Array, obs: Array) -> Array:
        """Per member ``1/2 (G_j - y)^T Gamma^{-1} (G_j - y)``."""
        residuals = self.white(forward_evals - obs[None, :])
        return 0.5 * jnp.sum(residuals * solve_rows(residuals, self.factor), axis=1)


def solve_rows(b: Array, factor: Array | None) -> Array:
    r"""Rows of ``b`` times ``(I + F F^T)^{-1}``, through the smaller of the two systems.

    $$(I + F F^\top)^{-1} = I - F (I_r + F^\top F)^{-1} F^\top$$

    ``F`` is ``(n, r)``: the ``n x n`` system when ``n <= r``, the ``r x r`` capacitance
    matrix otherwise, ``O(n r min(n, r))``.
    """
    if factor is None or factor.shape[1] == 0:
        return b
    n, r = factor.shape
    if n <= r:
        system = jnp.eye(n, dtype=factor.dtype) + mm(factor, factor.T)
        return jsl.cho_solve(jsl.cho_factor(system, lower=True), b.T).T
    capacitance = jnp.eye(r, dtype=factor.dtype) + mm(factor.T, factor)
    cap = jsl.cho_factor(capacitance, lower=True)
    return b - mm(jsl.cho_solve(cap, mm(factor.T, b.T)).T, factor.T)


def stack_factor(first: Array, noise_factor: Array | None) -> Array:
    """``[first, U~]``: the factor of ``first first^T + N`` as ``I + F F^T``."""
    if noise_factor is None:
        return first
    return jnp.concatenate([first, noise_factor], axis=1)


def draw_perturbations(
    key: PRNGKeyArray, noise: lx.AbstractLinearOperator, n_e: int, dtype: Any, center: bool
) -> Array:
    """``(N_e, N_y)`` draws from ``N(0, Gamma)`` (centred to mean zero if ``center``)."""
    zeros = jnp.zeros(noise.in_size(), dtype)
    eps = fxp.perturbed_observations(key, zeros, noise, n_e, center=center)
    return eps.astype(dtype)


def failure_guard(forward_evals: Array, throw: bool, owner: str) -> tuple[Array, Array]:
    """``(forward_evals, n_failed)``; raises inside jit on non-finite rows when ``throw``."""
    failed = ~jnp.all(jnp.isfinite(forward_evals), axis=1)
    n_failed = jnp.sum(failed).astype(jnp.int32)
    if throw:
        forward_evals = eqx.error_if(
            forward_evals,
            jnp.any(failed),
            f"{owner}.update: some members' forward evaluations are NaN/inf. The smoother "
            "cannot use them; check the forward model on those parameters (or narrow the "
            f"prior), or pass {owner}(throw=False) to skip such updates.",
        )
    return forward_evals, n_failed


def skip_if_failed(new: InversionState, old: InversionState, n_failed: Array) -> InversionState:
    """Keep the old ensemble/weights (but count the update) when members failed."""
    ok = n_failed == 0

    def pick(a: Any, b: Any) -> Any:
        return jnp.where(ok, a, b)

    return eqx.tree_at(
        lambda s: (s.ensemble, s.weights),
        new,
        (pick(new.ensemble, old.ensemble), jax.tree.map(pick, new.weights, old.weights)),
        is_leaf=lambda x: x is None,
    )


# --- the shared base and driver --------------------------------------------------------------


class AbstractInverseSmoother(eqx.Module):
    """An ensemble smoother for the inverse problem ``y = G(theta) + eta``, ``eta ~ N(0, Gamma)``.

    Subclasses implement `init`, `update` and `n_steps`; `run` is the compiled driver.
    """

    @property
    @abc.abstractmethod
    def n_steps(self) -> int:
        """The number of updates `run` takes."""

    @abc.abstractmethod
    def init(
        self,
        key: PRNGKeyArray,
        prior_ensemble: Float[ArrayLike, "N_e N_p"],
        obs: Float[ArrayLike, " N_y"],
        obs_noise: fxp.NoiseLike,
    ) -> InversionState:
        """Return the initial state."""

    @abc.abstractmethod
    def update(
        self, state: InversionState, forward_evals: Float[ArrayLike, "N_e N_y"]
    ) -> InversionState:
        """Return the state after one update given ``G`` at every member of `state.ensemble`."""

    def run(
        self,
        forward_fn: Callable[..., Any],
        prior_ensemble: Float[ArrayLike, "N_e N_p"],
        obs: Float[ArrayLike, " N_y"],
        obs_noise: fxp.NoiseLike,
        *,
        key: PRNGKeyArray,
    ) -> InversionResult:
        """Run all `n_steps` updates against a JAX forward model in one compiled loop.

        ``forward_fn`` maps ONE parameter vector ``(N_p,)`` to ``G(theta)`` of shape ``(N_y,)``
        and must be traceable; it is vmapped over the members inside a ``lax.scan`` under
        ``eqx.filter_jit`` (the whole run is one XLA program; vmap it over keys for seeds).

        **Arguments:**

        - `forward_fn`: the forward model ``G`` for one member.
        - `prior_ensemble`: ``(N_e, N_p)`` draws from the prior, ``N_e >= 2``.
        - `obs`: ``y``, shape ``(N_y,)``.
        - `obs_noise`: ``Gamma`` (scalar, variances, matrix or lineax operator).
        - `key`: PRNG key (same key => bit-identical result).

        **Returns:** an `InversionResult`.
        """
        if not callable(forward_fn):
            raise TypeError(
                f"forward_fn must be a callable theta (N_p,) -> G(theta) (N_y,); got "
                f"{type(forward_fn).__name__}."
            )
        state = self.init(key, prior_ensemble, obs, obs_noise)
        return _run(self, forward_fn, state)


@eqx.filter_jit
def _run(
    method: AbstractInverseSmoother, forward_fn: Callable[..., Any], state: InversionState
) -> InversionResult:
    n_e, n_p = state.ensemble.shape
    n_y = state.obs.shape[0]
    whitening = Whitening.build(state.obs_noise, state.ensemble.dtype)

    def body(state: InversionState, _: None) -> tuple[InversionState, tuple[Array, Array]]:
        theta = state.ensemble
        g = jax.vmap(forward_fn)(theta)
        if jnp.shape(g) != (n_e, n_y):
            raise ValueError(
                f"vmap(forward_fn) over {n_e} members returned shape {jnp.shape(g)}; expected "
                f"({n_e}, {n_y}): forward_fn must map ONE parameter vector ({n_p},) to ONE "
                f"output of length N_y = {n_y} (the observation size)."
            )
        g = jnp.asarray(g).astype(theta.dtype)
        new = method.update(state, g)
        return new, (new.ensemble, g)

    final, (ensembles, forward) = lax.scan(body, state, None, length=method.n_steps)
    misfit = jnp.mean(jax.vmap(lambda g: whitening.misfits(g, state.obs))(forward), axis=1)
    history = jnp.concatenate([state.ensemble[None], ensembles], axis=0)
    return InversionResult(
        ensemble=final.ensemble,
        history=history,
        forward_history=forward,
        misfit=misfit,
        n_forward_evaluations=method.n_steps * n_e,
        state=final,
    )
