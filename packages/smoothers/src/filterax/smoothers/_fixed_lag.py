r"""The fixed-lag ensemble Kalman smoother: batch (from a history) and online (a cycled method).

- `FixedLagSmoother.smooth`: from an `assimilate` history (``save="forecast_and_analysis"``).
- `OnlineFixedLagSmoother`: an `EnsembleFilter` plus a rolling buffer of the last ``lag + 1``
  ensembles, as a cycled method (`filterax.primitives.AbstractCycledMethod`) that the one
  driver `filterax.filters.run` loops over; `FixedLagSmoother.run_online` is that run,
  repackaged as a `SmootherResult`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree, Real

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.primitives import rms_spread

from ._base import (
    AbstractEnsembleSmoother,
    check_context,
    check_global_filter,
    check_lag,
    rotation_matrix,
)
from ._enks import smooth_lagged
from ._result import SmootherResult
from ._transforms import matmul, replay_transform

__all__ = [
    "FixedLagSmoother",
    "OnlineFixedLagDiagnostics",
    "OnlineFixedLagSmoother",
    "OnlineFixedLagState",
]

_OK = ff.RunResult.OK
_DIVERGED = ff.RunResult.DIVERGED


class FixedLagSmoother(AbstractEnsembleSmoother):
    r"""The fixed-lag ensemble Kalman smoother: each state uses the next ``lag`` observations.

    With the ensemble-space analysis transforms ``X^a_k = W_k X^f_k`` of the filter (see
    `EnKS`),

    $$X^s_j = W_{\min(j+L,\,T-1)} \cdots W_{j+1}\, X^a_j ,$$

    so ``lag = 0`` is the filter and ``lag >= T - 1`` the `EnKS`. Two ways to compute it:

    - `smooth` (batch): from an `assimilate` history saved with
      ``save="forecast_and_analysis"``; the transforms of all cycles are recomputed in
      parallel and each row's product of at most ``L`` of them is built in parallel.
    - `run_online`: filter and smooth in ONE `lax.scan`, as DAPPER's ``EnKS(Lag=L)`` does:
      `OnlineFixedLagSmoother` (a rolling buffer of the last ``L + 1`` ensembles receives each
      new ``W_k``; the oldest entry has then seen its ``L`` later observations and is emitted)
      run by `filterax.filters.run`. Memory does not grow with ``T`` beyond the
      ``(T, N_x)`` / ``(T,)`` statistics (plus ``(T, N_e, N_x)`` only with
      ``save_ensembles=True``).

    Both give the same smoothed rows (to round-off), and `run_online`'s forecast/analysis
    statistics are those of `assimilate` with the same key.

    **Arguments:**

    - `lag`: the number ``L >= 0`` of later observation times each state is conditioned on
      (a static Python int).

    **Reference:** G. Evensen & P. J. van Leeuwen (2000), *MWR* 128, 1852-1867 (the
    fixed-lag form); L. Cosme, J. Verron, P. Brasseur, J. Blum & D. Auroux (2010),
    *MWR* 138. DAPPER equivalent: ``dapper.da_methods.ensemble.EnKS(upd_a, N, Lag=L)``.

    **Example:**

    ```python
    out = FixedLagSmoother(lag=5).run_online(
        ETKF(), ssm.dynamics, ssm.obs_op, ssm.obs_noise, ens0, xp.observations, xp.times,
        key=jax.random.key(0), inflator=MultiplicativeInflator(1.02))
    out.scores(xp.truth)["rmse_s"]
    ```
    """

    lag: int = eqx.field(static=True)

    def __init__(self, lag: Any):
        # Checked here (not by the annotation) so a bad lag gets the explanatory ValueError.
        self.lag = check_lag(lag)

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
        """Batch fixed-lag smoothing of `history` (see the class docstring and `EnKS`:
        localised filters get the local fixed-lag smoother, and the replay is checked
        against the history; ``rotate`` must be the ``rotate=`` of the run)."""
        return smooth_lagged(
            filt,
            history,
            observations,
            obs_op,
            obs_noise,
            key,
            context,
            int(self.lag),
            save_ensembles,
            rotate,
            check_replay,
            "FixedLagSmoother.smooth",
        )

    def online(
        self, filter_method: ff.EnsembleFilter, save_ensembles: bool = False
    ) -> OnlineFixedLagSmoother:
        """This smoother's online form around `filter_method`, a cycled method for
        `filterax.filters.run` (see `OnlineFixedLagSmoother`)."""
        return OnlineFixedLagSmoother(filter_method, self.lag, save_ensembles)

    def run_online(
        self,
        filt: Any,
        dynamics: Any,
        obs_op: Any,
        obs_noise: Any,
        ensemble0: Real[ArrayLike, "..."],
        observations: Float[ArrayLike, "..."],
        obs_times: Real[ArrayLike, "..."],
        *,
        key: PRNGKeyArray,
        inflator: Any = None,
        rotate: bool = False,
        t0: Real[ArrayLike, ""] = 0.0,
        context: Mapping[str, Any] | None = None,
        throw: bool = True,
        save_ensembles: bool = False,
        divergence_threshold: Real[ArrayLike, ""] | None = None,
    ) -> SmootherResult:
        """Filter and fixed-lag smooth in one `lax.scan` (one compiled program).

        ``run(OnlineFixedLagSmoother(EnsembleFilter(filt, inflator, rotate, context=context),
        lag), Model(dynamics, obs_op, obs_noise, t0=t0), ensemble0, observations, obs_times,
        key=key, ...)`` repackaged as a `SmootherResult` (`OnlineFixedLagSmoother.
        smoother_result`). Each cycle is `assimilate`'s (same keys from `cycle_keys`, same
        forecast, analysis, inflation and rotation, same freezing of non-finite cycles), plus
        the transform ``W_k`` (`ensemble_transform`) applied to the rolling buffer of the
        ``lag`` previous ensembles. Arguments as in `filterax.filters.assimilate` (no
        localizer: localised filters are refused); `save_ensembles` also stacks the
        ``(T, N_e, N_x)`` smoothed ensembles; `divergence_threshold` flags cycles whose RMS
        innovation exceeds it (status ``2``), as in `assimilate`.

        **Returns:** a `SmootherResult` whose forecast/analysis rows equal
        `assimilate`'s and whose smoothed rows equal `smooth` of that history.
        """
        check_global_filter(filt, "FixedLagSmoother.run_online")
        context = check_context(context)
        if inflator is not None and not callable(inflator):
            raise TypeError(
                "inflator must be an AbstractInflator (e.g. MultiplicativeInflator(1.02)) or a "
                f"callable inflator(analysis, forecast, *, key); got {type(inflator).__name__}."
            )
        where = "FixedLagSmoother.run_online"
        model = fxp.Model(dynamics, obs_op, obs_noise, t0=t0)
        observations, obs_times = ff.check_run_arguments(
            model, observations, obs_times, key, "stats", divergence_threshold, t0, where
        )
        # A lag past the end of the run is the EnKS: a longer buffer would only hold zeros.
        lag = min(int(self.lag), observations.shape[0] - 1)
        method = OnlineFixedLagSmoother(
            ff.EnsembleFilter(filt, inflator=inflator, rotate=bool(rotate), context=context),
            lag,
            bool(save_ensembles),
        )
        return _run_online(
            method, model, ensemble0, observations, obs_times, key, bool(throw),
            divergence_threshold,
        )  # fmt: skip


class OnlineFixedLagState(eqx.Module):
    """The state of an `OnlineFixedLagSmoother` between cycles.

    **Fields:**

    - `filter_state`: the `EnsembleFilter`'s `EnsembleState` (analysis ensemble and
      post-processor states).
    - `buffer`: ``(lag + 1, N_e, N_x)`` the ensembles of the last ``lag + 1`` cycles
      ``k - lag, ..., k``, oldest first, each conditioned on the observations up to ``k``
      (zeros before the first cycles).
    """

    filter_state: ff.EnsembleState
    buffer: Float[Array, "n_buffer N_e N_x"]


class OnlineFixedLagDiagnostics(eqx.Module):
    """What an `OnlineFixedLagSmoother` cycle ``k`` reports besides the filter's rows.

    **Fields:**

    - `filter`: the `EnsembleFilter`'s diagnostics (its post-processor states).
    - `smoothed_mean`, `smoothed_spread`: ``(N_x,)`` and scalar, the smoothed estimate of
      cycle ``k - lag`` (conditioned on observations up to ``k``); meaningless for
      ``k < lag``. `OnlineFixedLagSmoother.smoother_result` puts the rows in place.
    - `smoothed_ensemble`: the ``(N_e, N_x)`` smoothed ensemble of cycle ``k - lag`` when the
      smoother was built with ``save_ensembles=True``, else ``None``.
    """

    filter: PyTree
    smoothed_mean: Float[Array, " N_x"]
    smoothed_spread: Real[Array, ""]
    smoothed_ensemble: Float[Array, "N_e N_x"] | None


class OnlineFixedLagSmoother(fxp.AbstractCycledMethod):
    r"""The online fixed-lag ensemble Kalman smoother, as a cycled method (DAPPER's
    ``EnKS(Lag=L)``).

    Cycle ``k`` is the cycle of `filter_method` (forecast, analysis ``X^a_k = W_k X^f_k``,
    post-processing), followed by the smoother's update of the rolling buffer of the
    ensembles of cycles ``k - L, ..., k - 1``:

    $$X_j \leftarrow R_k W_k X_j\quad (k - L \le j < k),$$

    with ``W_k`` the analysis transform of the filter's kernel recomputed exactly by
    `ensemble_transform` (same analysis key) and ``R_k`` the cycle's random rotation when the
    filter rotates (so the buffered members stay paired with the current ones; inflation and
    other post-processing act on the current ensemble only, as in DAPPER). The new analysis
    joins the buffer and the oldest entry, now conditioned on its ``L`` later observations,
    is emitted as the smoothed row of cycle ``k - L`` in `OnlineFixedLagDiagnostics`. The
    state is ``O(L N_e N_x)`` whatever ``T``; only the ``O(N_x)`` rows are stacked by the
    driver.

    Run it with `filterax.filters.run` (which owns the loop, keys, statistics, freezing,
    status codes, divergence and ``throw``), then `smoother_result` puts the smoothed rows in
    place (the last ``L`` come from the final buffer).

    **Arguments:**

    - `filter_method`: an `EnsembleFilter` whose kernel has one ensemble-space transform
      (a global filter: `LETKF` is refused).
    - `lag`: ``L >= 0`` (static).
    - `save_ensembles`: also emit the smoothed ``(N_e, N_x)`` ensembles (stacked:
      ``O(T N_e N_x)`` memory).

    **Example:**

    ```python
    import jax
    import filterax.filters as ff
    import filterax.primitives as fxp
    from filterax.smoothers import OnlineFixedLagSmoother
    from filterax.zoo import presets

    ssm = presets.lorenz63_sakov2012()
    xp = ssm.simulate(jax.random.key(0), 200)
    method = OnlineFixedLagSmoother(
        ff.EnsembleFilter(ff.ETKF(), inflator=fxp.MultiplicativeInflator(1.02)), lag=4)
    out = ff.run(method, ssm, ssm.initial_ensemble(jax.random.key(1), 10),
                 xp.observations, xp.times, key=jax.random.key(2))
    method.smoother_result(out).scores(xp.truth, 20)  # rmse_s < rmse_a
    ```
    """

    filter_method: ff.EnsembleFilter
    lag: int = eqx.field(static=True)
    save_ensembles: bool = eqx.field(static=True)

    def __init__(self, filter_method: ff.EnsembleFilter, lag: Any, save_ensembles: bool = False):
        if not isinstance(filter_method, ff.EnsembleFilter):
            raise TypeError(
                "filter_method must be an EnsembleFilter (e.g. EnsembleFilter(ETKF(), "
                f"inflator=MultiplicativeInflator(1.02))); got {type(filter_method).__name__}."
            )
        check_global_filter(filter_method.kernel, "OnlineFixedLagSmoother")
        self.filter_method = filter_method
        self.lag = check_lag(lag)
        self.save_ensembles = bool(save_ensembles)

    def init(
        self, key: PRNGKeyArray, initial: Real[ArrayLike, "..."], model: fxp.AbstractModel
    ) -> OnlineFixedLagState:
        """The filter's initial state and an empty (zero) buffer."""
        filter_state = self.filter_method.init(key, initial, model)
        particles = filter_state.particles
        buffer = jnp.zeros((self.lag + 1, *particles.shape), particles.dtype)
        return OnlineFixedLagState(filter_state, buffer)

    def step(
        self,
        key: PRNGKeyArray,
        state: OnlineFixedLagState,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[OnlineFixedLagState, fxp.CycleInfo]:
        """The filter's cycle, then ``W_k`` (and the rotation) applied to the buffer."""
        filt = self.filter_method
        filter_state, info = filt.step(key, state.filter_state, model, t_prev, t, obs)
        forecast, analysis = info.forecast, info.analysis
        n_e, dtype = forecast.shape[0], forecast.dtype
        # The four keys EnsembleFilter.step draws from the cycle key (`cycle_keys`), and the
        # keys it hands its post-processing chain: inflator, rotation slot, then `post`.
        _, k_an, k_infl, k_rot = jax.random.split(key, 4)
        chain = filt.chain
        chain_keys = (k_infl, k_rot, *(jax.random.fold_in(k_rot, i) for i in range(2, len(chain))))
        finite_forecast = jnp.all(jnp.isfinite(forecast))
        transform = replay_transform(
            filt.kernel,
            k_an,
            jnp.where(finite_forecast, forecast, 0.0),
            jnp.asarray(obs).astype(dtype),
            model.obs_op,
            model.obs_noise,
            filt.context,
        )
        for processor, k in zip(chain, chain_keys, strict=True):
            if isinstance(processor, fxp.RandomRotation):
                # the buffered past members get the same relabelling (see `EnKS`)
                transform = matmul(rotation_matrix(k, n_e, dtype), transform)
        # A failed cycle is frozen by the driver; W = I keeps NaN out of the buffer's gradients.
        transform = jnp.where(info.finite, transform, jnp.eye(n_e, dtype=dtype))
        older = jax.vmap(lambda e: matmul(transform, e))(state.buffer[1:])
        buffer = jnp.concatenate([older, analysis[None]], axis=0)
        oldest = buffer[0]
        diagnostics = OnlineFixedLagDiagnostics(
            filter=info.diagnostics,
            smoothed_mean=jnp.mean(oldest, axis=0),
            smoothed_spread=rms_spread(oldest),
            smoothed_ensemble=oldest if self.save_ensembles else None,
        )
        info = dataclasses.replace(info, diagnostics=diagnostics)
        return OnlineFixedLagState(filter_state, buffer), info

    def smoother_result(self, out: ff.RunResult) -> SmootherResult:
        """The `SmootherResult` of a `filterax.filters.run` of this method.

        Row ``j`` of the smoothed estimate is the row emitted by cycle ``j + L`` or, for the
        last ``L`` cycles before the end of the run (or before its first non-finite cycle,
        where the driver froze the state), the final buffer. Rows of non-finite cycles are NaN.
        """
        lag = self.lag
        diag = out.diagnostics
        # Assimilated cycles: not the non-finite ones, nor those of a run with invalid
        # (traced) times or noise (status 3, 4), whose flushed buffer rows used to be zeros.
        valid = (out.cycle_status == _OK) | (out.cycle_status == _DIVERGED)
        smoothed_mean = diag.smoothed_mean
        smoothed_spread = diag.smoothed_spread
        ensembles = diag.smoothed_ensemble if self.save_ensembles else None
        if lag > 0:
            n_times = valid.shape[0]
            # A failure is absorbing: the cycles before the first failure are the valid ones.
            n_valid = jnp.sum(valid).astype(jnp.int32)
            rows = jnp.arange(n_times, dtype=jnp.int32)
            emitted = rows + lag < n_valid
            row_index = jnp.minimum(rows + lag, n_times - 1)
            buffer_index = jnp.clip(rows - n_valid + lag, 0, lag - 1)
            flushed = out.state.buffer[1:]
            smoothed_mean = jnp.where(
                emitted[:, None],
                smoothed_mean[row_index],
                jnp.mean(flushed, axis=1)[buffer_index],
            )
            smoothed_spread = jnp.where(
                emitted, smoothed_spread[row_index], rms_spread(flushed)[buffer_index]
            )
            if ensembles is not None:
                ensembles = jnp.where(
                    emitted[:, None, None], ensembles[row_index], flushed[buffer_index]
                )
        nan = jnp.asarray(jnp.nan, smoothed_mean.dtype)
        smoothed_mean = jnp.where(valid[:, None], smoothed_mean, nan)
        smoothed_spread = jnp.where(valid, smoothed_spread, nan)
        if ensembles is not None:
            ensembles = jnp.where(valid[:, None, None], ensembles, nan)
        return SmootherResult(
            forecast_mean=out.forecast_mean,
            analysis_mean=out.analysis_mean,
            smoothed_mean=smoothed_mean,
            forecast_spread=out.forecast_spread,
            analysis_spread=out.analysis_spread,
            smoothed_spread=smoothed_spread,
            log_likelihood=out.log_likelihood,
            smoothed_ensembles=ensembles,
            particles=out.state.filter_state.particles,
            iterations=None,
            times=out.times,
            status=out.status,
            first_failure=out.first_failure,
        )


@eqx.filter_jit
def _run_online(
    method: OnlineFixedLagSmoother,
    model: fxp.Model,
    ensemble0: Any,
    observations: Array,
    obs_times: Array,
    key: PRNGKeyArray,
    throw: bool,
    divergence_threshold: Any,
) -> SmootherResult:
    out = ff.run_cycles(
        method,
        model,
        ensemble0,
        observations,
        obs_times,
        key,
        model.t0,
        "stats",
        throw,
        divergence_threshold,
        "FixedLagSmoother.run_online",
    )
    return method.smoother_result(out)
