"""Gaussian (EnKF-family) rows of the non-Gaussian benchmarks, with DAPPER's settings.

The yardsticks the particle and flow filters are measured against on
`lorenz96_bocquet2010` (DAPPER's EnKF-N N=8 row) and `lorenz96_spantini2019` (DAPPER's
ETKF / LETKF rows at N = 40 and 100). The Lorenz-63 sparse benchmarks use the tuning-free
EnKF-N (`EnKF_N-10`, configured in the main table).
"""

from __future__ import annotations

import filterax.filters as fxf
from filterax.primitives import dapper_radius_to_gc_halfwidth

from ._benchmarks_nongaussian import L96_BOCQUET2010, L96_SPANTINI2019
from ._registry import MethodConfig

__all__ = ["nongaussian_enkf_methods"]


def _etkf(params):
    del params
    return fxf.ETKF()


def _enkf_n(params):
    return fxf.EnKF_N(xN=params.get("xN", 1.0))


def _letkf(params):
    return fxf.LETKF(radius=dapper_radius_to_gc_halfwidth(params["localization_radius"]))


def _letkf_row(n: int, inflation: float) -> MethodConfig:
    label = f"LETKF N={n} infl={inflation:.2f} loc_rad=4"
    return MethodConfig(
        name=f"LETKF-{n}",
        family="LETKF",
        filter=_letkf,
        n_ensemble=n,
        context=True,
        settings={L96_SPANTINI2019: {"inflation": inflation, "localization_radius": 4.0}},
        reference_labels={L96_SPANTINI2019: label},
        description=f"local ETKF, N={n} (DAPPER's spantini2019 row)",
    )


def nongaussian_enkf_methods() -> list[MethodConfig]:
    """The `MethodConfig` rows of the module docstring."""
    return [
        MethodConfig(
            name="EnKF_N-8-xN1.3",
            family="EnKF_N",
            filter=_enkf_n,
            n_ensemble=8,
            rotate=True,
            hyper={"xN": 1.3},
            settings={L96_BOCQUET2010: {}},
            reference_labels={L96_BOCQUET2010: "EnKF-N N=8 rot xN=1.3"},
            optional_params=("xN",),
            description="finite-size EnKF, N=8, xN=1.3, random rotation (DAPPER bocquet2010)",
        ),
        MethodConfig(
            name="ETKF-100",
            family="ETKF",
            filter=_etkf,
            n_ensemble=100,
            settings={L96_SPANTINI2019: {"inflation": 1.10}},
            reference_labels={L96_SPANTINI2019: "ETKF N=100 infl=1.10"},
            description="ETKF, N=100 (DAPPER's spantini2019 EnKF('Sqrt') row)",
        ),
        _letkf_row(40, 1.10),
        _letkf_row(100, 1.02),
    ]
