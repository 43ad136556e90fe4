"""The 4D-EnKF rows (`filterax.zoo.EnKF4D`, Hunt et al. 2004) and their comparisons.

On `lorenz96_async_k4` (observations every 0.05, analyses every K = 4 observation times):

- ``EnKF4D-20-K4``: the 4D-EnKF, windows of 4 observation times, each observation compared
  with the ensemble trajectory at its own time; N_e = 20, rotation, inflation.
- ``EnKF4D3D-20-K4``: the "3D" shortcut Hunt et al. compare against: the same windows, but
  the window's observations are treated as if made at the analysis time (compared with the
  window-end ensemble) — what an ETKF does that gathers a window's data at analysis time.
- ``ETKF-20-sync``: the ETKF with an analysis at every observation time, the synchronous
  ideal (the 4D methods cannot beat it: they use the same data later).

Every method reports its best estimate at every observation time (the 4D rows between
analyses are forecasts), so the rows are comparable. The 4D rows inflate once per window
(four model steps), hence their larger factors: an inflation sweep on seed 0, 1500 cycles
(`rmse.a` over all times after the burn-in) gave for the 4D-EnKF 1.1: diverged, 1.15: 0.249,
1.2: 0.268, 1.3: 0.280 (1.2 kept, on the safe side of the divergence edge), and for the 3D
shortcut 1.2: 2.25, 1.25: 1.33, 1.3: 1.34, 1.4: 1.34.

Measured (``filterax-bench run``, 5000 cycles, seeds 0-2, rmse.a mean ± s.e.): ETKF-20-sync
0.1948 ± 0.0011, EnKF4D-20-K4 0.261 ± 0.005, EnKF4D3D-20-K4 1.339 ± 0.005 (flagged diverged:
rmse.a > 2 spread.a). Treating a 0.2 window's observations as simultaneous fails on L96, the
4D-EnKF's trajectory-based comparison costs only the delay of the analysis.
"""

from __future__ import annotations

from typing import Any

import filterax.filters as fxf
from filterax.primitives import MultiplicativeInflator
from filterax.zoo import EnKF4D

from ._benchmarks_async import ASYNC_K4
from ._registry import MethodConfig

__all__ = ["enkf4d_methods"]

_K = 4
_INFLATION_GRID = (1.0, 1.02, 1.04, 1.06, 1.08, 1.1, 1.15, 1.2)
# once per window of four steps: about the fourth power of the per-step factors
_WINDOW_INFLATION_GRID = (1.1, 1.15, 1.2, 1.25, 1.3, 1.4, 1.5)


def _enkf4d(mode: str):
    def factory(params: Any) -> EnKF4D:
        return EnKF4D(
            lag=_K, inflator=MultiplicativeInflator(params["inflation"]), rotate=True, mode=mode
        )

    factory.__name__ = f"enkf4d_{mode}_factory"
    return factory


def enkf4d_methods() -> list[MethodConfig]:
    """The MethodConfigs of the 4D-EnKF comparison (module docstring)."""
    return [
        MethodConfig(
            name="EnKF4D-20-K4",
            family="EnKF4D",
            kind="cycled",
            filter=_enkf4d("4d"),
            n_ensemble=20,
            rotate=True,
            settings={ASYNC_K4: {"inflation": 1.2}},
            tune_grid={"inflation": _WINDOW_INFLATION_GRID},
            description="4D-EnKF (Hunt 2004), N=20, analyses every 4 obs times, rotation",
        ),
        MethodConfig(
            name="EnKF4D3D-20-K4",
            family="EnKF4D",
            kind="cycled",
            filter=_enkf4d("3d"),
            n_ensemble=20,
            rotate=True,
            settings={ASYNC_K4: {"inflation": 1.3}},
            tune_grid={"inflation": _WINDOW_INFLATION_GRID},
            description="3D shortcut: window's obs treated as valid at the analysis time",
        ),
        MethodConfig(
            name="ETKF-20-sync",
            family="ETKF",
            filter=fxf.ETKF(),
            n_ensemble=20,
            rotate=True,
            settings={ASYNC_K4: {"inflation": 1.04}},
            tune_grid={"inflation": _INFLATION_GRID},
            description="ETKF with an analysis at every observation time (synchronous ideal)",
        ),
    ]
