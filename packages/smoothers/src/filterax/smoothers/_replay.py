r"""Checking that a smoother's replay of a filter run reproduces that run.

The `EnKS` and the `FixedLagSmoother` do not store the filter's analysis transforms: they
recompute them from the history's forecasts with the filter, observations, operators, key,
context and rotation flag the user passes to ``smooth``. Given anything else (another key,
other observations, another filter, the wrong ``rotate``) they would silently smooth a
different run. The replay is deterministic, so every cycle can be checked against what the
history stored:

1. the *mean*: ``mean(W_k X^f_k)`` must equal the stored analysis mean (inflation and
   rotation keep the mean);
2. the *members*: the stored analysis anomalies must be, column by column, a combination of
   the replayed analysis anomalies ``R_k W_k X'^f_k`` and the forecast anomalies
   ``R_k X'^f_k`` (``R_k`` the run's rotation, ``I`` without one). This is exactly what
   multiplicative, adaptive, RTPS (a factor per column) and RTPP (a per-column mix with the
   forecast) inflation leave, and what a different key (another rotation or perturbation),
   a different ``rotate`` flag or a different square root breaks.

Errors are measured relative to the largest entry of the cycle's ensembles and compared with
`replay_tolerance`, ``1000 eps kappa`` with ``kappa`` the conditioning of that analysis.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

import filterax.filters as ff

__all__ = [
    "ReplayErrors",
    "analysis_conditioning",
    "cycle_replay_errors",
    "enforce_replay",
    "replay_tolerance",
]


# A replay of the same run agrees with it to REPLAY_TOLERANCE * eps * kappa of the ensemble's
# magnitude (see `replay_tolerance`).
REPLAY_TOLERANCE = 1000.0


def replay_tolerance(dtype: Any, conditioning: Array) -> Array:
    """``1000 eps kappa``: how far a correct replay may differ from the run (relative).

    A correct replay differs from the run only by round-off, but not bit for bit: the
    transform is recomputed from an ensemble of another shape (``[X^f, I]``), batched over
    cycles, so XLA sums in another order, and the analysis amplifies round-off by the
    condition number ``kappa`` of the ``I + S S^T`` it inverts (`analysis_conditioning`;
    with accurate observations ``kappa`` reaches ``1e5`` and a float32 analysis is then
    only good to ``1e-2``). Measured, relative to the ensemble's magnitude: at most
    ``25 eps kappa`` (float64 and float32; ETKF, EnSRF_Serial, DEnKF, EnKF-N,
    StochasticEnKF, LETKF; no, multiplicative, RTPS, RTPP and adaptive inflation, with and
    without rotation; Lorenz-63 and Lorenz-96 with R = 2, 1, 0.1 and 0.001, 150 cycles),
    so ``1000`` leaves a margin of 40. A wrong key, rotation, filter or observation moves the
    replay by the order of the analysis increment or of the spread, ``1e-2`` of the
    magnitude on those problems, far above ``1000 eps kappa`` in float64 (``< 1e-8``) and,
    in float32, above it in every cycle with ``kappa < 80``.
    """
    eps = float(np.finfo(np.dtype(dtype)).eps)
    return REPLAY_TOLERANCE * eps * conditioning


class ReplayErrors(eqx.Module):
    """Per-cycle mismatch of a replay with the history (relative, see `cycle_replay_errors`).

    **Fields:**

    - `mean`: ``(T,)`` the largest difference of the replayed and stored analysis means.
    - `members`: ``(T,)`` the largest part of a stored anomaly column that the replayed
      (rotated) analysis and forecast anomalies of that column do not explain.
    - `conditioning`: ``(T,)`` the cycle's ``kappa`` (`analysis_conditioning`).
    - `valid`: ``(T,)`` the cycles that were assimilated (the others are not checked).
    """

    mean: Float[Array, " T"]
    members: Float[Array, " T"]
    conditioning: Float[Array, " T"]
    valid: Bool[Array, " T"]


def analysis_conditioning(
    forecast: Float[Array, "N_e N_x"], obs: Float[Array, " N_y"], obs_op: Any, obs_noise: Any
) -> Float[Array, ""]:
    r"""``kappa = 1 + ||S||_F^2`` with ``S = R^{-1/2} Y'^\top / \sqrt{N_e - 1}`` (observed
    entries only): an upper bound of the condition number ``1 + ||S||_2^2`` of the
    ``I + S S^T`` every ensemble Kalman analysis inverts, so the round-off of an analysis is
    ``~ kappa eps`` of the ensemble's magnitude (localised analyses use parts of ``S``, so
    less)."""
    inputs = ff.prepare_analysis(forecast, obs, obs_op, obs_noise, name="replay check")
    s = jax.lax.stop_gradient(inputs.whitened_anomalies)
    return 1.0 + jnp.sum(s * s)


def _unit_columns(x: Array, threshold: Array) -> Array:
    norm = jnp.sqrt(jnp.sum(x * x, axis=0))
    keep = norm > threshold
    return jnp.where(keep[None, :], x / jnp.where(keep, norm, 1.0)[None, :], 0.0)


def cycle_replay_errors(
    replayed: Float[Array, "N_e N_x"],
    rotated_forecast: Float[Array, "N_e N_x"],
    stored: Float[Array, "N_e N_x"],
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    r"""``(mean_error, member_error)`` of one cycle's replay.

    With ``s`` the largest entry of the forecast and stored analysis (``|x|``):

    - ``mean_error = max_i |mean(replayed)_i - mean(stored)_i| / s``;
    - ``member_error = max_i ||a_i - P_i a_i|| / (sqrt(N_e) s)``, ``a_i`` the stored anomaly
      column ``i`` and ``P_i`` the projector onto the span of the replayed column ``b_i`` and
      the rotated forecast column ``f_i`` (Gram–Schmidt; only a direction shorter than
      ``16 eps sqrt(N_e) s``, i.e. round-off, is dropped: the residual's error from an
      inaccurate short direction is ``~ eps ||f_i||`` however short it is, so keeping it
      costs nothing, while dropping a real one would leave up to its length).

    Both are compared with `replay_tolerance`.

    **Arguments:** ``replayed = R W X^f``, ``rotated_forecast = R X^f`` (``R`` the cycle's
    rotation, or ``I``) and the ``stored`` analysis ensemble, each ``(N_e, N_x)``.
    """
    replayed, rotated_forecast, stored = jax.lax.stop_gradient((replayed, rotated_forecast, stored))
    n_e = stored.shape[0]
    scale = jnp.maximum(jnp.max(jnp.abs(rotated_forecast)), jnp.max(jnp.abs(stored)))
    scale = jnp.where(scale > 0, scale, jnp.ones((), scale.dtype))
    mean_replayed = jnp.mean(replayed, axis=0)
    mean_stored = jnp.mean(stored, axis=0)
    mean_error = jnp.max(jnp.abs(mean_replayed - mean_stored)) / scale

    column_scale = math.sqrt(n_e) * scale
    threshold = 16 * float(np.finfo(np.dtype(stored.dtype)).eps) * column_scale
    a = stored - mean_stored[None, :]
    b = replayed - mean_replayed[None, :]
    f = rotated_forecast - jnp.mean(rotated_forecast, axis=0)[None, :]
    q1 = _unit_columns(b, threshold)
    q2 = _unit_columns(f - jnp.sum(q1 * f, axis=0)[None, :] * q1, threshold)
    residual = a - jnp.sum(q1 * a, axis=0)[None, :] * q1
    residual = residual - jnp.sum(q2 * residual, axis=0)[None, :] * q2
    member_error = jnp.max(jnp.sqrt(jnp.sum(residual * residual, axis=0))) / column_scale
    return mean_error, member_error


_WHAT_MEAN = (
    "the replayed analysis mean differs from the one stored in the history, so this smoother "
    "would silently smooth another run: the filter (or its hyper-parameters), the "
    "observations, obs_op, obs_noise, context or, for a stochastic filter, the key differ "
    "from the run that made this history. Pass the ones given to assimilate(..., save="
    "'forecast_and_analysis'). (A run whose inflator moves the mean, e.g. AdditiveInflator, "
    "cannot be checked: then pass check_replay=False.)"
)
_WHAT_MEMBERS = (
    "the stored analysis members are not the replayed analysis (relabelled by the run's "
    "rotation), so this smoother would pair the members wrongly across times and silently "
    "return another estimate: the key or the rotate flag (or the filter: another square "
    "root with the same mean) differ from the run that made this history. Pass key=, "
    "rotate= and the filter given to assimilate(..., save='forecast_and_analysis'). (Runs "
    "with an inflator other than multiplicative, adaptive, RTPS or RTPP, e.g. "
    "AdditiveInflator, cannot be checked: then pass check_replay=False.)"
)


def _concrete(x: Any) -> np.ndarray | None:
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def enforce_replay(result: Any, errors: ReplayErrors, where: str) -> Any:
    """`result` if every assimilated cycle's replay matches; else a `ValueError` (concrete
    call) or an `eqx.error_if` runtime error (under `jit` / `vmap`) naming what differs."""
    tol = replay_tolerance(errors.mean.dtype, errors.conditioning)
    bad_mean = errors.valid & (errors.mean > tol)
    bad_members = errors.valid & (errors.members > tol)
    concrete = _concrete(bad_mean), _concrete(bad_members)
    if concrete[0] is not None and concrete[1] is not None:
        for bad, values, what in (
            (concrete[0], errors.mean, _WHAT_MEAN),
            (concrete[1], errors.members, _WHAT_MEMBERS),
        ):
            if bad.any():
                k = int(np.argmax(bad.reshape(-1, bad.shape[-1]).any(axis=0)))
                worst = float(np.max(np.asarray(values)[..., k]))
                allowed = float(np.max(np.asarray(tol)[..., k]))
                raise ValueError(
                    f"{where}: {what} First mismatch at cycle {k}: {worst:.1e} of the "
                    f"ensemble's magnitude, where a replay of the same run agrees to "
                    f"{allowed:.1e}."
                )
        return result
    index = jnp.where(jnp.any(bad_mean), 0, 1)
    return eqx.branched_error_if(
        result,
        jnp.any(bad_mean) | jnp.any(bad_members),
        index,
        (f"{where}: {_WHAT_MEAN}", f"{where}: {_WHAT_MEMBERS}"),
    )
