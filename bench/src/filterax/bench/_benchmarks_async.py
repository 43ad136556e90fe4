"""Asynchronous observations: the benchmark of the 4D-EnKF (Hunt et al. 2004) comparison.

| name | model | observed | cycles (burn-in) | references |
|---|---|---|---|---|
| `lorenz96_async_k4` | Lorenz-96 N_x=40, dt_obs 0.05 | all, R = I | 5000 (400) | none |

The twin is the one of `lorenz96_sakov2008` (observations every 0.05, the RK4 step): what
makes it "asynchronous" is the protocol of the methods configured for it, which make an
analysis only every K = 4 observation times (a 0.2 window) while the observations keep coming
every step. Every method reports, at each observation time, its best estimate from the
observations it has assimilated by then (the 4D-EnKF's rows between two analyses are
forecasts), so ``rmse.a`` here is the time mean over all observation times, analysis times
and in-between times alike; the synchronous ETKF (an analysis every step) is the ideal.
"""

from __future__ import annotations

from filterax.zoo import presets

from ._registry import Benchmark, register_benchmark

__all__ = ["ASYNC_K4", "register_async_benchmarks"]

ASYNC_K4 = "lorenz96_async_k4"


def register_async_benchmarks() -> None:
    """Register `lorenz96_async_k4` (see the module docstring)."""
    table = presets.PUBLISHED_RMSE["lorenz96_sakov2008"]
    register_benchmark(
        Benchmark(
            name=ASYNC_K4,
            model=presets.lorenz96_sakov2008,
            n_cycles=5000,
            citation=(
                "Lorenz-96 twin of Sakov & Oke (2008) observed every 0.05, analyses every K = 4 "
                "observation times as in the 4D-EnKF experiments of Hunt et al. (2004), Tellus "
                "A 56; no published scores for this protocol."
            ),
            climatology_rmse=dict(table["rmse_a"]).get("Climatology"),
            description=(
                "Lorenz-96 N_x=40, all observed every 0.05 (R = I); 4D methods analyse every "
                "4 observation times (0.2 windows)"
            ),
        )
    )
