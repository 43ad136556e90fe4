"""The result type shared by every sequential (state-estimation) smoother."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, Real

from filterax.primitives import rmse

__all__ = ["SmootherResult"]


def _check_burn_in(burn_in_cycles: Any, n_times: int) -> int:
    if (
        isinstance(burn_in_cycles, bool)
        or not isinstance(burn_in_cycles, int | np.integer)
        or not 0 <= burn_in_cycles < n_times
    ):
        raise ValueError(
            f"burn_in_cycles must be a Python int in [0, T) = [0, {n_times}); got "
            f"{burn_in_cycles!r}."
        )
    return int(burn_in_cycles)


class SmootherResult(eqx.Module):
    """What the state-estimation smoothers return. Row ``k`` is observation time ``k``.

    DAPPER reports three estimates per time: the forecast (``.f``, before the observation at
    that time), the analysis (``.a``, the filter: observations up to that time) and the
    smoothed estimate (``.s``, later observations too). All three are here.

    **Fields:**

    - `forecast_mean`, `analysis_mean`, `smoothed_mean`: ``(T, N_x)`` ensemble means.
    - `forecast_spread`, `analysis_spread`, `smoothed_spread`: ``(T,)`` DAPPER's ``rmv``:
      ``sqrt(mean_i var_i)`` with the ``N_e - 1`` variance.
    - `log_likelihood`: ``(T,)`` the per-cycle ``log p(y_k | y_{1:k-1})`` estimate of the
      forward (filter) pass, NaN where the method has none.
    - `smoothed_ensembles`: ``(T, N_e, N_x)`` smoothed ensembles when requested, else ``None``.
    - `particles`: the final ``(N_e, N_x)`` analysis (filter) ensemble, to continue a run.
    - `iterations`: ``(T,)`` iterations used per window (iterative smoothers), else ``None``.
    - `times`: ``(T,)`` the observation times.
    - `status`: ``0`` ok, ``1`` non-finite somewhere (the rows from the first failure on are
      NaN; also a smoothed row that came out NaN/inf), ``2`` diverged, ``3`` invalid (traced)
      observation times, ``4`` invalid (traced) noise: nothing assimilated or smoothed, every
      row NaN (as `filterax.filters.AssimilationResult.status`).
    - `first_failure`: the first failing cycle, ``-1`` if none.
    """

    forecast_mean: Float[Array, "T N_x"]
    analysis_mean: Float[Array, "T N_x"]
    smoothed_mean: Float[Array, "T N_x"]
    forecast_spread: Float[Array, " T"]
    analysis_spread: Float[Array, " T"]
    smoothed_spread: Float[Array, " T"]
    log_likelihood: Float[Array, " T"]
    smoothed_ensembles: Float[Array, "T N_e N_x"] | None
    particles: Float[Array, "N_e N_x"]
    iterations: Int[Array, " T"] | None
    times: Real[Array, " T"]
    status: Int[Array, ""]
    first_failure: Int[Array, ""]

    @property
    def mean(self) -> Float[Array, "T N_x"]:
        """Alias of `smoothed_mean`."""
        return self.smoothed_mean

    @property
    def spread(self) -> Float[Array, " T"]:
        """Alias of `smoothed_spread`."""
        return self.smoothed_spread

    def scores(self, truth: Float[ArrayLike, "T N_x"], burn_in_cycles: int = 0) -> dict[str, Array]:
        """DAPPER's time-mean scores over the cycles ``burn_in_cycles:``.

        ``rmse_f``, ``rmse_a``, ``rmse_s``: time mean of ``sqrt(mean_i (mean_i - truth_i)^2)``
        of the forecast / analysis / smoothed mean (DAPPER's ``rmse.f``, ``rmse.a``,
        ``rmse.s``); ``spread_f``, ``spread_a``, ``spread_s``: time means of the spreads.
        Leading batch axes of a vmapped result are kept.

        **Arguments:**

        - `truth`: ``(T, N_x)`` true states at the observation times.
        - `burn_in_cycles`: number of leading cycles to drop (a Python int).
        """
        truth = jnp.asarray(truth)
        n_times, n_x = self.smoothed_mean.shape[-2:]
        if truth.shape != (n_times, n_x):
            raise ValueError(
                f"truth must have shape (T, N_x) = ({n_times}, {n_x}), one true state per "
                f"observation time; got {truth.shape}."
            )
        b = _check_burn_in(burn_in_cycles, n_times)
        out = {}
        for tag, mean, spread in (
            ("f", self.forecast_mean, self.forecast_spread),
            ("a", self.analysis_mean, self.analysis_spread),
            ("s", self.smoothed_mean, self.smoothed_spread),
        ):
            m = mean[..., b:, :]
            t = jnp.broadcast_to(truth[b:].astype(m.dtype), m.shape)
            out[f"rmse_{tag}"] = jnp.mean(rmse(m, t), axis=-1)
            out[f"spread_{tag}"] = jnp.mean(spread[..., b:], axis=-1)
        return out
