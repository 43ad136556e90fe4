"""Leaderboard rows for DAPPER's baselines: `Climatology` and `OptInterp` (`filterax.zoo`).

Every DAPPER table starts with them: how much a method buys over the climatological mean and
over a static Kalman gain. Both are built from the benchmark's climatological statistics
(`filterax.bench._climatology.climatology_statistics`: one long free run with its own key,
cached per benchmark) and run through `filterax.filters.run` as ``kind="cycled"`` methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from ._climatology import climatology_statistics
from ._registry import Benchmark, MethodConfig

__all__ = ["baseline_methods"]

L63 = "lorenz63_sakov2012"
L96 = "lorenz96_sakov2008"
KS = "ks_bocquet2019"
_BENCHMARKS = (L63, L96, KS)


def _statistics(benchmark: Benchmark) -> tuple[Any, Any]:
    # The runner builds the method inside its jitted, seed-vmapped cell: evaluate the (cached)
    # free run eagerly so that concrete arrays, not tracers, are cached and closed over.
    with jax.ensure_compile_time_eval():
        return climatology_statistics(benchmark)


def _climatology(params: Mapping[str, Any], benchmark: Benchmark) -> Any:
    from filterax.zoo import Climatology

    del params
    return Climatology(*_statistics(benchmark))


def _optinterp(params: Mapping[str, Any], benchmark: Benchmark) -> Any:
    from filterax.zoo import OptInterp

    del params
    return OptInterp(*_statistics(benchmark))


def _no_initial(key: Any, benchmark: Benchmark, params: Mapping[str, Any]) -> None:
    # Both start from (and OptInterp returns to) the climatological mean every cycle.
    del key, benchmark, params
    return None


def baseline_methods() -> list[MethodConfig]:
    """The `Climatology` and `OptInterp` rows on L63, L96 and KS with DAPPER's references."""
    return [
        MethodConfig(
            name="Climatology",
            family="Climatology",
            filter=_climatology,
            kind="cycled",
            initial=_no_initial,
            reference_labels={b: "Climatology" for b in _BENCHMARKS},
            climatological=True,
            description="the climatological mean every cycle (DAPPER's Climatology)",
        ),
        MethodConfig(
            name="OptInterp",
            family="OptInterp",
            filter=_optinterp,
            kind="cycled",
            initial=_no_initial,
            reference_labels={b: "OptInterp" for b in _BENCHMARKS},
            description="optimal interpolation: climatological mean and static gain (DAPPER's)",
        ),
    ]
