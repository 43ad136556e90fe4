"""The abstract sequential smoother and the checks and bookkeeping its subclasses share."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.primitives import rms_spread

from ._replay import ReplayErrors, analysis_conditioning, cycle_replay_errors
from ._result import SmootherResult
from ._transforms import matmul, replay_local_transforms, replay_transform

__all__ = ["AbstractEnsembleSmoother"]

STATUS_OK = ff.AssimilationResult.OK
STATUS_NONFINITE = ff.AssimilationResult.NONFINITE
STATUS_DIVERGED = ff.AssimilationResult.DIVERGED
STATUS_INVALID_NOISE = ff.AssimilationResult.INVALID_NOISE


class AbstractEnsembleSmoother(eqx.Module):
    """A sequential ensemble smoother: post-processes a filter run into smoothed estimates.

    Subclasses implement `smooth`, which turns the history of an `assimilate` run (saved with
    ``save="forecast_and_analysis"``) into a `SmootherResult`. `assimilate_and_smooth` runs
    both as one compiled program.
    """

    @abc.abstractmethod
    def smooth(
        self,
        filt: Any,
        history: ff.AssimilationResult,
        observations: Float[ArrayLike, "T N_y"] | None,
        obs_op: Any,
        obs_noise: Any,
        *,
        key: PRNGKeyArray | None,
        context: Mapping[str, Any] | None = None,
        save_ensembles: bool = False,
        rotate: bool = False,
        check_replay: bool = True,
    ) -> SmootherResult:
        """Smooth the filter run `history` (see the subclasses for what is used).

        **Arguments:**

        - `filt`: the filter of the run.
        - `history`: the `AssimilationResult` of ``assimilate(..., save=
          "forecast_and_analysis")``.
        - `observations`: the ``(T, N_y)`` observations of the run (NaN = missing).
        - `obs_op`, `obs_noise`: as given to `assimilate`.
        - `key`: the ``key=`` given to `assimilate` (replays the same random draws).
        - `context`: the ``context`` given to `assimilate` (extra ``filt.analysis`` keywords).
        - `save_ensembles`: also return the ``(T, N_e, N_x)`` smoothed ensembles.
        - `rotate`: the ``rotate=`` given to `assimilate`. The random rotation of each cycle
          relabels the members; the smoothers that replay the filter's transforms (`EnKS`,
          `FixedLagSmoother`) apply it to the past states too, so that the members stay
          paired across times (it leaves their mean and covariance unchanged).
        - `check_replay`: the smoothers that replay the filter (`EnKS`, `FixedLagSmoother`)
          check every cycle's replay against the history and refuse a mismatch (another
          key, rotate flag, filter, observations, ...). ``False`` skips the check, for runs
          whose inflator it cannot see through (`AdditiveInflator`, custom callables).

        **Returns:** a `SmootherResult`.
        """


def check_history(history: Any) -> tuple[int, int, int]:
    """``(T, N_e, N_x)`` of a history saved with both ensembles, or a clear `ValueError`."""
    if not isinstance(history, ff.AssimilationResult):
        raise TypeError(
            "history must be the AssimilationResult of filterax.filters.assimilate(..., "
            f"save='forecast_and_analysis'); got {type(history).__name__}."
        )
    if history.ensembles is None or history.forecast_ensembles is None:
        raise ValueError(
            "the smoothers need the forecast and analysis ensembles of every cycle: run "
            "filterax.filters.assimilate(..., save='forecast_and_analysis') (or use "
            "assimilate_and_smooth, which does)."
        )
    shape = history.ensembles.shape
    if len(shape) != 3:
        raise ValueError(
            f"history.ensembles must have shape (T, N_e, N_x); got {shape}. A vmapped history "
            "is smoothed by vmapping the smoother too."
        )
    n_times, n_e, n_x = shape
    if n_times < 1:
        raise ValueError("history is empty (T = 0): there is nothing to smooth.")
    if history.forecast_ensembles.shape != shape:
        raise ValueError(
            f"history.forecast_ensembles {history.forecast_ensembles.shape} and "
            f"history.ensembles {shape} must have the same shape (T, N_e, N_x)."
        )
    if n_e < 2:
        raise ValueError(
            f"the ensembles have N_e={n_e} member(s); ensemble smoothers need N_e >= 2."
        )
    for name in ("ensembles", "forecast_ensembles"):
        dtype = getattr(history, name).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"history.{name} must be floating point; got dtype {dtype}. Smooth the "
                "AssimilationResult that assimilate returned."
            )
    _check_history_finite(history)
    return n_times, n_e, n_x


def _check_history_finite(history: ff.AssimilationResult) -> None:
    """Refuse a concrete history with a NaN/inf entry in a cycle it reports as assimilated.

    `assimilate` never stores one (a non-finite cycle gets ``cycle_status`` 1 and is skipped by
    the smoothers); such a history was changed after the run or assembled by hand, and would
    come back as NaN with status OK. Traced histories are checked by the result's status
    (`finish_result`)."""
    status = fxp.concrete_value(history.cycle_status)
    if status is None:
        return
    assimilated = np.isin(np.asarray(status), (STATUS_OK, STATUS_DIVERGED))
    for name in ("ensembles", "forecast_ensembles"):
        values = fxp.concrete_value(getattr(history, name))
        if values is None:
            continue
        bad = ~np.isfinite(values) & assimilated.reshape(-1, 1, 1)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"history.{name} has a non-finite entry at index {index} (cycle, member, "
                f"component), in cycle {index[0]} whose cycle_status says it was assimilated: "
                "assimilate never stores one (a failed cycle has cycle_status 1), so this "
                "history was changed after the run or built by hand. Smooth the "
                "AssimilationResult that assimilate returned."
            )


def check_obs_noise(obs_noise: Any, n_y: int, where: str) -> None:
    """Refuse a concrete ``obs_noise`` that is not finite and positive definite (it is
    whitened in every replayed analysis); a traced one is checked when the program runs
    (status ``INVALID_NOISE``, see `noise_valid`)."""
    # A size mismatch is left to the analysis, whose message names the observation operator.
    if fxp.noise_dimension(obs_noise) in (None, n_y):
        fxp.positive_definite_noise(obs_noise, n_y, name=f"{where}: obs_noise")


def noise_valid(obs_noise: Any, n_y: int) -> Array:
    """Whether ``obs_noise`` is finite and positive definite, as a traced boolean
    (`filterax.primitives.valid_noise`): the run-time counterpart of `check_obs_noise`."""
    return fxp.valid_noise(obs_noise, n_y)


def is_localised(filt: Any, context: Mapping[str, Any] | None = None) -> bool:
    """Whether `filt` analyses each grid point with its own transform (a localised filter:
    an `AbstractLocalFilter` such as `LETKF`, or a filter handed a ``localizer``)."""
    return isinstance(filt, fxp.AbstractLocalFilter) or "localizer" in (context or {})


def check_filter(filt: Any) -> None:
    """Refuse objects without an ``analysis`` method (the replaying smoothers need one)."""
    if not callable(getattr(filt, "analysis", None)):
        raise TypeError(
            "filt must be a sequential filter with an analysis(key, forecast, obs, obs_op, "
            f"obs_noise, **context) method; got {type(filt).__name__}."
        )


def check_global_filter(filt: Any, where: str) -> None:
    """Refuse localised filters where only one ensemble transform per cycle is supported."""
    if isinstance(filt, fxp.AbstractLocalFilter):
        raise ValueError(
            f"{where} applies one N_e x N_e transform per cycle to its buffer, but "
            f"{type(filt).__name__} analyses every grid point with its own transform. Save the "
            "run with assimilate(..., save='forecast_and_analysis', context=...) and smooth it "
            "with FixedLagSmoother(lag).smooth(filt, history, observations, obs_op, "
            "obs_noise, key=key, context=context, rotate=rotate), which replays the local "
            "transforms (a local EnKS)."
        )
    check_filter(filt)


def check_observations(observations: Any, n_times: int, dtype: Any) -> Array:
    """The ``(T, N_y)`` observations as an array of the ensemble dtype."""
    if observations is None:
        raise ValueError(
            "this smoother replays the analyses and needs the (T, N_y) observations of the run."
        )
    observations = jnp.asarray(observations)
    if observations.ndim != 2 or observations.shape[0] != n_times:
        raise ValueError(
            f"observations must have shape (T, N_y) with T={n_times} rows, one per cycle of "
            f"history; got shape {observations.shape}."
        )
    return observations.astype(dtype)


def check_context(context: Any) -> dict[str, Any]:
    if context is not None and not isinstance(context, Mapping):
        raise TypeError(
            "context must be a dict of extra keyword arguments for filt.analysis; got "
            f"{type(context).__name__}."
        )
    return dict(context or {})


def check_lag(lag: Any) -> int:
    if isinstance(lag, bool) or not isinstance(lag, int | np.integer) or lag < 0:
        raise ValueError(
            f"lag must be a non-negative Python int (the number of later observation times "
            f"each state is smoothed with; 0 is the filter); got {lag!r}."
        )
    return int(lag)


def valid_cycles(history: ff.AssimilationResult) -> Bool[Array, " T"]:
    """Cycles with an estimate: the assimilated ones (status OK or DIVERGED), not the
    non-finite (frozen) ones nor those of a run with invalid times or noise (status 3, 4)."""
    return (history.cycle_status == STATUS_OK) | (history.cycle_status == STATUS_DIVERGED)


def where_rows(valid: Array, x: Array, fill: Any) -> Array:
    """Row ``k`` of `x` where ``valid[k]``, else `fill` (broadcast)."""
    mask = valid.reshape(valid.shape + (1,) * (x.ndim - 1))
    return jnp.where(mask, x, jnp.asarray(fill, x.dtype))


def build_result(
    history: ff.AssimilationResult,
    smoothed: Float[Array, "T N_e N_x"],
    save_ensembles: bool,
) -> SmootherResult:
    """Assemble a `SmootherResult` from the filter history and smoothed ensembles.

    Rows of non-finite cycles are NaN (as in the history); nothing else is.
    """
    valid = valid_cycles(history)
    smoothed = where_rows(valid, smoothed, jnp.nan)
    return finish_result(
        history,
        jnp.mean(smoothed, axis=1),
        rms_spread(smoothed),
        smoothed if save_ensembles else None,
    )


def _finite_rows(x: Array | None) -> Array:
    """Per row (leading axis): whether every entry is finite (``True`` for ``None``)."""
    if x is None:
        return jnp.asarray(True)
    return jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1)


def finish_result(
    history: ff.AssimilationResult,
    smoothed_mean: Array,
    smoothed_spread: Array,
    smoothed_ensembles: Array | None,
) -> SmootherResult:
    valid = valid_cycles(history)
    smoothed_mean = where_rows(valid, smoothed_mean, jnp.nan)
    smoothed_spread = where_rows(valid, smoothed_spread, jnp.nan)
    # A traced history with a NaN/inf entry in an assimilated cycle (the eager check in
    # `check_history` sees only concrete ones), or a smoothed row that is not finite there, is
    # a non-finite result: never NaN (or a number computed from inf) with status OK.
    broken = valid & ~(
        jnp.all(jnp.isfinite(smoothed_mean), axis=-1)
        & jnp.isfinite(smoothed_spread)
        & _finite_rows(history.ensembles)
        & _finite_rows(history.forecast_ensembles)
    )
    history_ok = (history.status == STATUS_OK) | (history.status == STATUS_DIVERGED)
    nonfinite = history_ok & jnp.any(broken)
    status = jnp.where(nonfinite, STATUS_NONFINITE, history.status).astype(history.status.dtype)
    first_failure = jnp.where(
        nonfinite & ((history.first_failure < 0) | (jnp.argmax(broken) < history.first_failure)),
        jnp.argmax(broken),
        history.first_failure,
    ).astype(history.first_failure.dtype)
    return SmootherResult(
        forecast_mean=history.forecast_mean,
        analysis_mean=history.analysis_mean,
        smoothed_mean=smoothed_mean,
        forecast_spread=history.forecast_spread,
        analysis_spread=history.analysis_spread,
        smoothed_spread=smoothed_spread,
        log_likelihood=history.log_likelihood,
        smoothed_ensembles=smoothed_ensembles,
        particles=history.particles,
        iterations=None,
        times=history.times,
        status=status,
        first_failure=first_failure,
    )


def rotation_matrix(key: PRNGKeyArray, n_e: int, dtype: Any) -> Float[Array, "N_e N_e"]:
    """The ensemble-space matrix ``R`` of ``rotate_ensemble(key, X) = R X`` (mean-preserving)."""
    return ff.rotate_ensemble(key, jnp.eye(n_e, dtype=dtype))


def identity_like(w: Array) -> Array:
    return jnp.broadcast_to(jnp.eye(w.shape[-1], dtype=w.dtype), w.shape)


def replay_inputs(
    history: ff.AssimilationResult, observations: Array
) -> tuple[Array, Array, Array, Array, Array]:
    """``(valid, steps, forecasts, analyses, observations)`` for a replay: the forecasts and
    analyses of non-finite (frozen) cycles are zeros and their observations all missing, a
    harmless finite stand-in so no NaN reaches values or gradients."""
    n_times = history.forecast_ensembles.shape[0]
    valid = valid_cycles(history)
    forecasts = where_rows(valid, history.forecast_ensembles, 0.0)
    analyses = where_rows(valid, history.ensembles, 0.0)
    obs = where_rows(valid, observations, jnp.nan)
    steps = jnp.arange(n_times, dtype=jnp.int32)
    return valid, steps, forecasts, analyses, obs


def cycle_transforms(
    filt: Any,
    history: ff.AssimilationResult,
    observations: Array,
    obs_op: Any,
    obs_noise: Any,
    key: PRNGKeyArray,
    context: dict[str, Any],
    rotate: bool = False,
) -> tuple[Float[Array, "T N_e N_e"], ReplayErrors]:
    """The analysis transforms ``W_k`` of every cycle, recomputed in parallel (`jax.vmap`),
    and how well they reproduce the history (`ReplayErrors`, see `_replay`).

    With ``rotate`` each ``W_k`` is followed by the cycle's random rotation ``R_k``
    (``rotate_ensemble`` with the rotation key of `cycle_keys`, as a matrix: its action on
    the identity), so the transform maps the forecast members onto the stored (rotated)
    analysis members up to inflation, and the past states get the same relabelling.

    Cycle ``k`` replays ``filt.analysis`` on the saved forecast with the analysis key
    `cycle_keys` ``(key, k)[1]`` of `assimilate` (see `ensemble_transform`). Non-finite
    (frozen) cycles contribute the identity (see `replay_inputs`).
    """
    valid, steps, forecasts, analyses, obs = replay_inputs(history, observations)

    def one(step, forecast, analysis, y):
        _, k_an, _, k_rot = ff.cycle_keys(key, step)
        w = replay_transform(filt, k_an, forecast, y, obs_op, obs_noise, context)
        rotated_forecast = forecast
        if rotate:
            rotation = rotation_matrix(k_rot, w.shape[0], w.dtype)
            w = matmul(rotation, w)
            rotated_forecast = matmul(rotation, forecast)
        errors = cycle_replay_errors(matmul(w, forecast), rotated_forecast, analysis)
        return w, (*errors, analysis_conditioning(forecast, y, obs_op, obs_noise))

    transforms, errors = jax.vmap(one)(steps, forecasts, analyses, obs)
    transforms = jnp.where(valid[:, None, None], transforms, identity_like(transforms))
    return transforms, ReplayErrors(*errors, valid)


def local_cycle_transform(
    filt: Any,
    step: Array,
    forecast: Float[Array, "N_e N_x"],
    analysis: Float[Array, "N_e N_x"],
    y: Float[Array, " N_y"],
    valid: Array,
    obs_op: Any,
    obs_noise: Any,
    key: PRNGKeyArray,
    context: dict[str, Any],
    rotate: bool,
) -> tuple[Float[Array, "N_x N_e N_e"], tuple[Array, Array, Array]]:
    """Cycle ``step``'s per-grid-point transforms ``R_k W^{(i)}_k`` of a localised filter
    (`local_ensemble_transforms`) and its replay errors (`cycle_replay_errors`); the identity
    for a frozen cycle. Inputs as from `replay_inputs`."""
    _, k_an, _, k_rot = ff.cycle_keys(key, step)
    w = replay_local_transforms(filt, k_an, forecast, y, obs_op, obs_noise, context)
    replayed = jnp.einsum("iab,bi->ai", w, forecast, precision=jax.lax.Precision.HIGHEST)
    rotated_forecast = forecast
    if rotate:
        rotation = rotation_matrix(k_rot, forecast.shape[0], forecast.dtype)
        w = jnp.einsum("ab,ibc->iac", rotation, w, precision=jax.lax.Precision.HIGHEST)
        replayed = matmul(rotation, replayed)
        rotated_forecast = matmul(rotation, forecast)
    errors = cycle_replay_errors(replayed, rotated_forecast, analysis)
    w = jnp.where(valid, w, identity_like(w))
    return w, (*errors, analysis_conditioning(forecast, y, obs_op, obs_noise))
