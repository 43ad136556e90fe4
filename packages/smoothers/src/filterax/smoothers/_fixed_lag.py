r"""The fixed-lag ensemble Kalman smoother: batch (from a history) and online (one scan)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

import filterax.filters as ff
from filterax.filters._assimilate import _forecast, _needs_key, _validate
from filterax.primitives import AdaptiveInflator, rms_spread

from ._base import (
    AbstractEnsembleSmoother,
    check_context,
    check_filter,
    check_lag,
    rotation_matrix,
)
from ._enks import smooth_lagged
from ._result import SmootherResult
from ._transforms import apply_obs, ensemble_transform, matmul

__all__ = ["FixedLagSmoother"]

_OK = ff.AssimilationResult.OK
_NONFINITE = ff.AssimilationResult.NONFINITE

_NONFINITE_MESSAGE = (
    "FixedLagSmoother.run_online: the ensemble became non-finite (NaN/inf) during the run. "
    "Re-run with throw=False: result.first_failure is the first failing cycle and the rows "
    "from that cycle on are NaN. Usual causes: unstable dynamics or time step, too much "
    "inflation, a badly scaled obs_noise, or float32 overflow."
)


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
      a rolling buffer of the last ``L + 1`` ensembles receives each new ``W_k``; the oldest
      entry has then seen its ``L`` later observations and is emitted. Memory does not grow
      with ``T`` beyond the ``(T, N_x)`` / ``(T,)`` statistics (plus ``(T, N_e, N_x)`` only
      with ``save_ensembles=True``).

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
    ) -> SmootherResult:
        """Batch fixed-lag smoothing of `history` (see the class docstring and `EnKS`;
        ``rotate`` must be the ``rotate=`` of the run)."""
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
        )

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
    ) -> SmootherResult:
        """Filter and fixed-lag smooth in one `lax.scan` (one compiled program).

        Each cycle is `assimilate`'s (same keys from `cycle_keys`, same forecast, analysis,
        inflation and rotation, same freezing of non-finite cycles), plus the transform ``W_k``
        (`ensemble_transform`) applied to the rolling buffer of the ``lag`` previous
        ensembles. Arguments as in `filterax.filters.assimilate` (no localizer: localised
        filters are refused); `save_ensembles` also stacks the ``(T, N_e, N_x)`` smoothed
        ensembles.

        **Returns:** a `SmootherResult` whose forecast/analysis rows equal
        `assimilate`'s and whose smoothed rows equal `smooth` of that history.
        """
        check_filter(filt)
        context = check_context(context)
        if key is None:
            raise TypeError("run_online needs key=... (a JAX PRNG key, e.g. jax.random.key(0)).")
        if jnp.ndim(t0) != 0:
            raise ValueError(f"t0 must be a scalar time; got shape {jnp.shape(t0)}.")
        # The same checks (and messages) as filterax.filters.assimilate.
        ensemble0, observations, obs_times = _validate(
            filt, dynamics, obs_op, ensemble0, observations, obs_times, key, inflator,
            "stats", None, t0,
        )  # fmt: skip
        return _run_online(
            filt,
            dynamics,
            obs_op,
            obs_noise,
            ensemble0,
            observations,
            obs_times,
            key,
            inflator,
            bool(rotate),
            t0,
            context,
            bool(throw),
            bool(save_ensembles),
            int(self.lag),
        )


@eqx.filter_jit
def _run_online(
    filt: Any,
    dynamics: Any,
    obs_op: Any,
    obs_noise: Any,
    ensemble0: Array,
    observations: Array,
    obs_times: Array,
    key: PRNGKeyArray,
    inflator: Any,
    rotate: bool,
    t0: Any,
    context: dict[str, Any],
    throw: bool,
    save_ensembles: bool,
    lag: int,
) -> SmootherResult:
    n_times = observations.shape[0]
    n_e, n_x = ensemble0.shape
    dtype = ensemble0.dtype
    lag = min(lag, n_times - 1)
    stochastic = _needs_key(dynamics)
    adaptive = isinstance(inflator, AdaptiveInflator)
    t_start = jnp.asarray(t0, dtype=obs_times.dtype)[None]
    t_prev = jnp.concatenate([t_start, obs_times[:-1]])
    steps = jnp.arange(n_times, dtype=jnp.int32)
    identity = jnp.eye(n_e, dtype=dtype)

    def cycle(carry, inputs):
        ensemble, infl_state, alive, buffer = carry
        infl = infl_state if adaptive else inflator
        step, obs, t_a, t_b = inputs
        k_fc, k_an, k_infl, k_rot = ff.cycle_keys(key, step)

        forecast = _forecast(dynamics, stochastic, ensemble, t_a, t_b, k_fc)
        if adaptive:
            observed_f = jax.vmap(lambda x: apply_obs(obs_op, x))(forecast)
            infl = infl.update(obs - jnp.mean(observed_f, axis=0), observed_f, obs_noise)
        result = filt.analysis(k_an, forecast, obs, obs_op, obs_noise, **context)
        analysis = jnp.asarray(result.particles).astype(dtype)
        finite_forecast = jnp.all(jnp.isfinite(forecast))
        transform = ensemble_transform(
            filt,
            k_an,
            jnp.where(finite_forecast, forecast, 0.0),
            obs,
            obs_op,
            obs_noise,
            context,
        )
        if infl is not None:
            analysis = infl(analysis, forecast, key=k_infl)
        if rotate:
            analysis = ff.rotate_ensemble(k_rot, analysis)
            # the buffered past members get the same relabelling (see `EnKS`)
            transform = matmul(rotation_matrix(k_rot, n_e, dtype), transform)

        valid = alive & finite_forecast & jnp.all(jnp.isfinite(analysis))
        status = jnp.where(valid, _OK, _NONFINITE).astype(jnp.int32)

        def row(x):
            return jnp.where(valid, x, jnp.full_like(x, jnp.nan))

        rows = {
            "forecast_mean": row(jnp.mean(forecast, axis=0)),
            "analysis_mean": row(jnp.mean(analysis, axis=0)),
            "forecast_spread": row(rms_spread(forecast)),
            "analysis_spread": row(rms_spread(analysis)),
            "log_likelihood": row(jnp.asarray(result.log_likelihood).astype(dtype)),
            "status": status,
        }
        # The rolling buffer holds the ensembles of cycles k-L..k: the L older ones receive
        # W_k, the new analysis is appended and the oldest (now conditioned on L later
        # observations) is emitted as smoothed row k - L. Frozen cycles contribute W = I.
        transform = jnp.where(valid, transform, identity)
        older = jax.vmap(lambda e: matmul(transform, e))(buffer[1:])
        buffer = jnp.concatenate([older, jnp.where(valid, analysis, 0.0)[None]], axis=0)
        rows["emitted_mean"] = jnp.mean(buffer[0], axis=0)
        rows["emitted_spread"] = rms_spread(buffer[0])
        if save_ensembles:
            rows["emitted_ensemble"] = buffer[0]

        new_ensemble = jnp.where(valid, analysis, ensemble)
        if adaptive:
            infl_state = jax.tree_util.tree_map(
                lambda new, old: jnp.where(valid, new, old) if eqx.is_array(new) else new,
                infl,
                infl_state,
            )
        return (new_ensemble, infl_state, valid, buffer), rows

    init = (
        ensemble0,
        inflator if adaptive else None,
        jnp.asarray(True),
        jnp.zeros((lag + 1, n_e, n_x), dtype),
    )
    (final, _, _, buffer), rows = jax.lax.scan(
        cycle, init, (steps, observations, t_prev, obs_times)
    )

    # Emitted row k is smoothed row k - L (k >= L); the last L rows are flushed from the buffer.
    smoothed_mean = jnp.concatenate([rows["emitted_mean"][lag:], jnp.mean(buffer[1:], axis=1)])
    smoothed_spread = jnp.concatenate([rows["emitted_spread"][lag:], rms_spread(buffer[1:])])
    cycle_status = rows["status"]
    valid = cycle_status != _NONFINITE
    nan = jnp.asarray(jnp.nan, dtype)
    smoothed_mean = jnp.where(valid[:, None], smoothed_mean, nan)
    smoothed_spread = jnp.where(valid, smoothed_spread, nan)
    ensembles = None
    if save_ensembles:
        ensembles = jnp.concatenate([rows["emitted_ensemble"][lag:], buffer[1:]])
        ensembles = jnp.where(valid[:, None, None], ensembles, nan)
    failed = ~valid
    status = jnp.where(jnp.any(failed), _NONFINITE, _OK).astype(jnp.int32)
    first_failure = jnp.where(jnp.any(failed), jnp.argmax(failed), -1).astype(jnp.int32)
    result = SmootherResult(
        forecast_mean=rows["forecast_mean"],
        analysis_mean=rows["analysis_mean"],
        smoothed_mean=smoothed_mean,
        forecast_spread=rows["forecast_spread"],
        analysis_spread=rows["analysis_spread"],
        smoothed_spread=smoothed_spread,
        log_likelihood=rows["log_likelihood"],
        smoothed_ensembles=ensembles,
        particles=final,
        iterations=None,
        times=obs_times,
        status=status,
        first_failure=first_failure,
    )
    if throw:
        result = eqx.error_if(result, status == _NONFINITE, _NONFINITE_MESSAGE)
    return result
