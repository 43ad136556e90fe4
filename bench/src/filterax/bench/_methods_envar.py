"""Leaderboard rows for the hybrid ensemble-variational method `filterax.zoo.EnVar`.

The static part of the hybrid B is the benchmark's climatological covariance
(`climatology_statistics`, one free run with its own key); the ensemble part is an ETKF
ensemble, inflated, rotated and re-centred on the hybrid analysis every cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from filterax.primitives import MultiplicativeInflator

from ._climatology import climatology_statistics
from ._registry import Benchmark, MethodConfig

__all__ = ["envar_methods"]

L96 = "lorenz96_sakov2008"


def _envar(params: Mapping[str, Any], benchmark: Benchmark) -> Any:
    import filterax.filters as fxf
    from filterax.zoo import EnVar

    _, static_cov = climatology_statistics(benchmark)
    return EnVar(
        fxf.ETKF(),
        static_cov,
        beta_c=params["beta_c"],
        beta_e=params.get("beta_e", 1.0),
        inflator=MultiplicativeInflator(params["inflation"]),
        rotate=True,
    )


def envar_methods() -> list[MethodConfig]:
    """The EnVar rows (3D hybrid, ETKF ensemble of 20, climatological B_c)."""
    return [
        MethodConfig(
            name="EnVar-20",
            family="EnVar",
            filter=_envar,
            kind="cycled",
            n_ensemble=20,
            inflation=1.04,
            # tuned (filterax-bench tune, 1000 cycles, tuning seed 100): rmse.a 0.193 at beta_c = 0
            # (pure ensemble), 0.201 at 5e-4, 0.231 at 2e-3, 0.314 at 8e-3 (inflation 1.04); the
            # row keeps the smallest hybrid weight on the grid, within 4% of the optimum.
            hyper={"beta_c": 0.0005, "beta_e": 1.0},
            settings={L96: {}},
            tune_grid={
                "beta_c": (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01),
                "inflation": (1.02, 1.04, 1.06),
            },
            description="hybrid 3D-EnVar: beta_c B_clim + beta_e P_e (alpha control variable), "
            "ETKF ensemble re-centred on the hybrid analysis",
        )
    ]
