"""Leaderboard rows for the smoothers of `filterax.smoothers` (scored on rmse.a and rmse.s).

A smoother's row is scored like a filter's (``rmse.a`` is the filter/analysis estimate that
DAPPER ranks by), with the smoothed estimate's ``rmse.s`` beside it. They run through the
``runner`` hook of `MethodConfig`: `iEnKS` with its own driver, the ensemble smoothers of a
filter history with `filterax.smoothers.assimilate_and_smooth` (one compiled call).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import filterax.filters as fxf
from filterax.primitives import MultiplicativeInflator

from ._registry import Benchmark, MethodConfig
from ._runner import Trajectory

__all__ = ["smoother_methods"]

L63 = "lorenz63_sakov2012"
L96 = "lorenz96_sakov2008"


def _inflator(params: Mapping[str, Any]) -> Any:
    infl = params.get("inflation")
    return None if infl is None else MultiplicativeInflator(infl)


def _whole(params: Mapping[str, Any], name: str, default: Any) -> int:
    """``params[name]`` as an int: a whole number (``2`` or ``2.0``); ``2.5`` is refused, not
    truncated."""
    value = params.get(name, default)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if math.isfinite(value) and float(value).is_integer():
            return int(value)
    raise ValueError(f"{name} must be a whole number; got {value!r}")


def _ienks(params: Mapping[str, Any]) -> Any:
    from filterax.smoothers import iEnKS

    return iEnKS(
        lag=_whole(params, "lag", 1),
        n_iter=_whole(params, "n_iter", 10),
        variant=str(params.get("variant", "sqrt")),
    )


def _check_ienks(params: Mapping[str, Any]) -> None:
    # What the runner builds from the hyper-parameters (MethodConfig.check).
    _ienks(params)
    _inflator(params)


def _trajectory(result: Any) -> Trajectory:
    # A SmootherResult scored like a filter run, with the smoothed means for rmse.s.
    return Trajectory(
        analysis_mean=result.analysis_mean,
        forecast_mean=result.forecast_mean,
        analysis_spread=result.analysis_spread,
        log_likelihood=result.log_likelihood,
        nonfinite=result.status == 1,
        smoothed_mean=result.smoothed_mean,
    )


def _ienks_runner(n_ensemble: int, rotate: bool) -> Callable[..., Trajectory]:
    def runner(keys: Any, benchmark: Benchmark, twin: Any, params: Mapping[str, Any]):
        model = benchmark.ssm
        _, k_ens, k_da = keys
        result = _ienks(params).run(
            model.dynamics,
            model.obs_op,
            model.obs_noise,
            model.initial_ensemble(k_ens, n_ensemble),
            twin.observations,
            twin.times,
            key=k_da,
            inflator=_inflator(params),
            rotate=rotate,
            t0=model.t0,
            throw=False,
        )
        return _trajectory(result)

    runner.__name__ = f"iEnKS_{n_ensemble}_runner"
    return runner


def _history_smoother_runner(
    smoother_factory: Callable[[Mapping[str, Any]], Any],
    filter_name: str,
    n_ensemble: int,
    rotate: bool,
) -> Callable[..., Trajectory]:
    def runner(keys: Any, benchmark: Benchmark, twin: Any, params: Mapping[str, Any]):
        from filterax.smoothers import assimilate_and_smooth

        model = benchmark.ssm
        _, k_ens, k_da = keys
        result = assimilate_and_smooth(
            smoother_factory(params),
            getattr(fxf, filter_name)(),
            model.dynamics,
            model.obs_op,
            model.obs_noise,
            model.initial_ensemble(k_ens, n_ensemble),
            twin.observations,
            twin.times,
            key=k_da,
            inflator=_inflator(params),
            rotate=rotate,
            t0=model.t0,
            throw=False,
        )
        return _trajectory(result)

    runner.__name__ = f"{filter_name}_{n_ensemble}_smoother_runner"
    return runner


def _history_smoother_check(
    smoother_factory: Callable[[Mapping[str, Any]], Any],
) -> Callable[[Mapping[str, Any]], None]:
    def check(params: Mapping[str, Any]) -> None:
        # What the runner builds from the hyper-parameters (MethodConfig.check).
        smoother_factory(params)
        _inflator(params)

    return check


def _enks(params: Mapping[str, Any]) -> Any:
    from filterax.smoothers import EnKS

    del params
    return EnKS()


def _fixed_lag(params: Mapping[str, Any]) -> Any:
    from filterax.smoothers import FixedLagSmoother

    return FixedLagSmoother(lag=_whole(params, "lag", None))


def smoother_methods(inflation_grid: tuple[float, ...]) -> list[MethodConfig]:
    """The built-in smoother configurations (registered by `_methods`)."""
    return [
        MethodConfig(
            name="iEnKS-10",
            family="iEnKS",
            n_ensemble=10,
            rotate=True,
            runner=_ienks_runner(10, rotate=True),
            check=_check_ienks,
            hyper={"lag": 1, "n_iter": 10, "variant": "sqrt"},
            static=("lag", "n_iter", "variant"),
            settings={L63: {"inflation": 1.02}},
            reference_labels={L63: "iEnKS Lag=1 N=10 infl=1.02 rot"},
            tune_grid={"inflation": inflation_grid},
            description="iterative EnKS (Bocquet & Sakov 2014), 'Sqrt', lag 1 (the iEnKF), N=10",
        ),
        MethodConfig(
            name="iEnKS-40",
            family="iEnKS",
            n_ensemble=40,
            rotate=True,
            runner=_ienks_runner(40, rotate=True),
            check=_check_ienks,
            hyper={"lag": 1, "n_iter": 10, "variant": "sqrt"},
            static=("lag", "n_iter", "variant"),
            settings={L96: {"inflation": 1.01}},
            reference_labels={L96: "iEnKS N=40 infl=1.01 rot"},
            tune_grid={"inflation": inflation_grid},
            description="iterative EnKS, 'Sqrt', lag 1, N=40",
        ),
        MethodConfig(
            name="EnKS-ETKF-10",
            family="EnKS",
            n_ensemble=10,
            rotate=True,
            runner=_history_smoother_runner(_enks, "ETKF", 10, rotate=True),
            check=_history_smoother_check(_enks),
            settings={L63: {"inflation": 1.02}},
            tune_grid={"inflation": inflation_grid},
            description="ensemble Kalman smoother (Evensen & van Leeuwen 2000) on ETKF-10",
        ),
        MethodConfig(
            name="EnKS-ETKF-20",
            family="EnKS",
            n_ensemble=20,
            rotate=True,
            runner=_history_smoother_runner(_enks, "ETKF", 20, rotate=True),
            check=_history_smoother_check(_enks),
            settings={L96: {"inflation": 1.04}},
            tune_grid={"inflation": inflation_grid},
            description="ensemble Kalman smoother on ETKF-20 (rmse.a = ETKF-20's)",
        ),
        MethodConfig(
            name="FixedLag4-ETKF-20",
            family="FixedLagSmoother",
            n_ensemble=20,
            rotate=True,
            runner=_history_smoother_runner(_fixed_lag, "ETKF", 20, rotate=True),
            check=_history_smoother_check(_fixed_lag),
            hyper={"lag": 4},
            static=("lag",),
            settings={L96: {"inflation": 1.04}},
            tune_grid={"inflation": inflation_grid},
            description="fixed-lag (4 cycles) ensemble smoother on ETKF-20",
        ),
    ]
