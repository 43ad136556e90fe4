"""What the inverse-problem smoothers (`ESMDA`, `IES`) share: state, result, base class, `run`.

They are processes like `EKI`: ``init(ensemble, obs, obs_noise, *, key)``, ``update(state,
forward_evals)``, `particles`, `misfits`, `mean`, `covariance`, so `calibrate` drives them (JAX
or executor forward models, constrained priors, member failures). `AbstractInverseSmoother.run`
is the smoothers' compiled convenience: ``n_steps`` updates of `calibrate`'s own loop against a
JAX forward model, returned as an `InversionResult`.
"""

# No `from __future__ import annotations`: equinox needs evaluated `AbstractVar` annotations.
import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

import filterax.primitives as fxp

from ._calibrate import _strengthen, raise_if_untraceable, scan_loop
from ._checks import check_initial_ensemble, check_obs, checked_obs_noise
from ._process_base import AbstractProcessBase, initial_key
from ._state import AbstractProcessState
from ._status import (
    STATUS_OK,
    data_ok,
    hyperparameters_ok,
    initial_status,
    next_status,
    status_messages,
)

__all__ = ["AbstractInverseSmoother", "InversionResult", "InversionState"]

_NOISE_HINT = (
    " Pass a scalar variance, a 1-D array of N_y variances, an (N_y, N_y) covariance "
    "matrix or a lineax operator of size N_y."
)


class InversionState(AbstractProcessState):
    """What `ESMDA` and `IES` carry from one update to the next.

    `init` builds it and `update` returns the next one; `run` and `calibrate` carry it through
    a ``lax.scan``, so its structure never changes between updates.

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
    - `n_failed`: members whose forward evaluation was non-finite in the last update.
    - `time`: the algorithm time, the sum of the steps `dt` taken: ``sum_i 1/alpha_i`` for
      `ESMDA` (1 after the last assimilation: the likelihood has been assimilated once),
      ``sum_i gamma_i`` for `IES`.
    - `dt`: the last step, ``1/alpha_i`` (`ESMDA`, the tempering of the likelihood) or the step
      length ``gamma_i`` (`IES`).
    - `converged`: all configured updates are done (``N_a`` assimilations, ``n_iter``
      iterations); `calibrate(..., until_converged=True)` stops there.
    - `status`: `AbstractProcessState.OK` (0), `.INVALID_DATA` (1) or
      `.INVALID_HYPERPARAMETERS` (2), for values only known at run time (see
      `AbstractProcessState`); with ``throw=True`` a bad one raises inside `jit` instead.
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
    time: Float[Array, ""]
    dt: Float[Array, ""]
    converged: Bool[ArrayLike, ""]
    status: Int[Array, ""]


class InversionResult(eqx.Module):
    """What `ESMDA.run` and `IES.run` return (``n`` = number of updates).

    **Fields:**

    - `ensemble`: the final ``(N_e, N_p)`` ensemble.
    - `history`: ``(n + 1, N_e, N_p)`` the prior ensemble, then the ensemble after each update.
    - `forward_history`: ``(n, N_e, N_y)`` ``G(theta_j)`` of ``history[k]``, the evaluations
      update ``k`` used (the final ensemble is not evaluated; a failed member's row is NaN).
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


_INIT_NAMES = ("ensemble_or_prior", "obs", "obs_noise")


class AbstractInverseSmoother(AbstractProcessBase):
    """An ensemble smoother for the inverse problem ``y = G(theta) + eta``, ``eta ~ N(0, Gamma)``.

    A process (`calibrate` drives it) with the smoothers' compiled `run`. Subclasses implement
    `n_steps`, `_needs_key`, `_start` (the method-specific part of the initial state) and
    `update`; `init`, `mean`, `covariance` and `run` are shared.
    """

    @property
    @abc.abstractmethod
    def n_steps(self) -> int:
        """The number of updates `run` takes."""

    @abc.abstractmethod
    def _needs_key(self) -> bool:
        """Whether `init`/`update` draw random numbers."""

    @abc.abstractmethod
    def _start(
        self, key: PRNGKeyArray, ensemble: Array, obs: Array, noise: lx.AbstractLinearOperator
    ) -> tuple[Array, Array | None]:
        """The initial ``(perturbations, weights)``."""

    def init(self, *args: Any, key: PRNGKeyArray | None = None, **kwargs: Any) -> InversionState:
        """Start from a prior ensemble.

        Two call forms: the process form ``init(ensemble, obs, obs_noise, *, key)`` (what
        `calibrate` calls), and the smoothers' ``init(key, prior_ensemble, obs, obs_noise)``.

        **Arguments:**

        - `ensemble` (or `prior_ensemble`): ``(N_e, N_p)`` prior draws ``theta^0_j``,
            ``N_e >= 2``.
        - `obs`: ``y``, shape ``(N_y,)``, finite.
        - `obs_noise`: ``Gamma``: scalar variance, ``(N_y,)`` variances, ``(N_y, N_y)``
            matrix or lineax operator; positive definite.
        - `key`: PRNG key (required by the perturbed-observation methods).

        **Returns:** the initial `InversionState`.
        """
        owner = type(self).__name__
        if key is None and len(args) == 4:
            # The smoothers' order, key first (the process form passes key=...).
            key, *args = args
            fxp.check_prng_key(key, f"{owner}.init(key, prior_ensemble, obs, obs_noise): key")
        elif key is not None:
            fxp.check_prng_key(key, f"{owner}.init(key=...)")
        if "prior_ensemble" in kwargs:
            kwargs["ensemble_or_prior"] = kwargs.pop("prior_ensemble")
        if len(args) > 3:
            raise TypeError(
                f"{owner}.init takes (ensemble, obs, obs_noise, *, key=...) or "
                f"(key, prior_ensemble, obs, obs_noise); got {len(args) + 1} positional "
                "arguments."
            )
        values = dict(zip(_INIT_NAMES, args, strict=False))
        for name, value in kwargs.items():
            if name not in _INIT_NAMES or name in values:
                raise TypeError(f"{owner}.init got an unexpected or repeated argument {name!r}.")
            values[name] = value
        missing = [name for name in _INIT_NAMES if name not in values]
        if missing:
            raise TypeError(f"{owner}.init is missing {', '.join(missing)}.")
        prior_name = f"{owner}.init(prior_ensemble=...)"
        fxp.check_ensemble(values["ensemble_or_prior"], prior_name)
        x = jnp.asarray(values["ensemble_or_prior"])
        dtype = fxp.floating_dtype(x, prior_name)
        check_initial_ensemble(x, prior_name)
        y = jnp.asarray(values["obs"]).astype(dtype)
        check_obs(y, f"{owner}.init(obs=...)")
        noise = checked_obs_noise(
            values["obs_noise"],
            y.shape[0],
            dtype=dtype,
            name=f"{owner}.init(obs_noise=...)",
            hint=_NOISE_HINT,
        )
        key = initial_key(key, self._needs_key(), owner)
        perturbations, weights = self._start(key, x, y, noise)
        return InversionState(
            ensemble=x,
            prior=x,
            obs=y,
            obs_noise=noise,
            perturbations=perturbations,
            key=key,
            iteration=jnp.asarray(0, jnp.int32),
            weights=weights,
            n_failed=jnp.asarray(0, jnp.int32),
            time=jnp.zeros((), dtype),
            dt=jnp.zeros((), dtype),
            converged=jnp.asarray(False),
            status=initial_status(self, y, noise, dtype, x),
        )

    def mean(self, state: InversionState) -> Float[Array, " N_p"]:
        """The ensemble mean."""
        return jnp.mean(state.ensemble, axis=0)

    def covariance(self, state: InversionState) -> Float[Array, "N_p N_p"]:
        """The Bessel-corrected ensemble covariance (dense ``(N_p, N_p)``)."""
        return fxp.ensemble_covariance(state.ensemble, dense=True)

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
        and must be traceable; it is vmapped over the members inside `calibrate`'s
        ``lax.scan`` under ``eqx.filter_jit`` (the whole run is one XLA program; vmap it over
        keys for seeds, differentiate through it). Unlike `calibrate`, failed members are left
        to the method's own ``throw``. For executors, constrained priors or a run until
        convergence use ``calibrate(method, forward_fn, prior_ensemble, obs, obs_noise,
        key=key, n_iterations=method.n_steps)``.

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
        owner = type(self).__name__
        with raise_if_untraceable(
            forward_fn,
            state.ensemble,
            f"{owner}.run",
            f"calibrate({owner}(...), forward_fn, prior_ensemble, obs, obs_noise, key=key, "
            f"n_iterations={self.n_steps}, executor=SerialExecutor())",
        ):
            return _run(self, forward_fn, _strengthen(state))


@eqx.filter_jit
def _run(
    method: AbstractInverseSmoother, forward_fn: Callable[..., Any], state: InversionState
) -> InversionResult:
    n_e = state.ensemble.shape[0]
    final, records, _, _, _ = scan_loop(
        method, forward_fn, None, None, state, method.n_steps, state.obs.shape[0], False, False
    )
    return InversionResult(
        ensemble=final.ensemble,
        history=jnp.concatenate([records.parameters, final.ensemble[None]], axis=0),
        forward_history=records.outputs,
        misfit=jnp.mean(records.misfits, axis=1),
        n_forward_evaluations=method.n_steps * n_e,
        state=final,
    )


def draw_perturbations(
    key: PRNGKeyArray, noise: lx.AbstractLinearOperator, n_e: int, dtype: Any, center: bool
) -> Array:
    """``(N_e, N_y)`` draws from ``N(0, Gamma)`` (centred to mean zero if ``center``)."""
    zeros = jnp.zeros(noise.in_size(), dtype)
    eps = fxp.perturbed_observations(key, zeros, noise, n_e, center=center)
    return eps.astype(dtype)


def failure_guard(
    forward_evals: Array, throw: bool, owner: str, status: Array | None = None
) -> tuple[Array, Array]:
    """``(forward_evals, failed)``; raises inside jit on non-finite rows when ``throw``.

    Not when ``status`` is already bad: then `checked_status` raises with the real cause (a
    traced NaN initial member gives NaN evaluations, which must not blame the forward model).
    """
    failed = ~jnp.all(jnp.isfinite(forward_evals), axis=1)
    if throw:
        blame = jnp.any(failed)
        if status is not None:
            blame = blame & (status == STATUS_OK)
        forward_evals = eqx.error_if(
            forward_evals,
            blame,
            f"{owner}.update: some members' forward evaluations are NaN/inf. The smoother "
            "cannot use them; check the forward model on those parameters (or narrow the "
            f"prior), or pass {owner}(throw=False) to skip such updates"
            + (
                " or ESMDA(failure_handler='sample_succ_gauss') to re-sample the failed members."
                if owner == "ESMDA"
                else "."
            ),
        )
    return forward_evals, failed


def checked_status(
    method: Any, state: InversionState, whitening: fxp.Whitening, dt: Array, throw: bool
) -> tuple[Array, Array]:
    """``(dt, status)`` of an update (`_status.py`); ``dt = 0`` unless OK; raises if ``throw``.

    ``dt`` is the step the method takes (``1/alpha_i``, ``gamma_i``), so a non-finite or
    negative one counts as invalid hyper-parameters.
    """
    status = next_status(
        state.status,
        data_ok(whitening.white(state.obs), whitening),
        hyperparameters_ok(method, dt),
    )
    if throw:
        owner = f"{type(method).__name__}.update"
        status = eqx.branched_error_if(
            status, status != STATUS_OK, jnp.maximum(status - 1, 0), status_messages(owner)
        )
    return jnp.where(status == STATUS_OK, dt, jnp.zeros_like(dt)), status


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


def no_minibatches(owner: str, obs: Any, obs_noise: Any, why: str) -> None:
    if obs is not None or obs_noise is not None:
        raise ValueError(
            f"{owner}.update takes no obs/obs_noise override (mini-batches): {why} Run it on "
            "the full observation vector (calibrate without batches=)."
        )
