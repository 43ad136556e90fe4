"""Benchmarks where Gaussian filters are biased: the particle-filter and flow-filter problems.

| name | model | observed | cycles (burn-in) | references |
|---|---|---|---|---|
| `lorenz96_bocquet2010` | L96 N_x=10, dt_obs 0.05 | 0, 2, .., 8; R = 1.5 I | 4000 (400) | DAPPER |
| `lorenz96_spantini2019` | L96 N_x=40, dt_obs 0.4 | 0, 2, .., 38; R = 0.5 I | 2000 (50) | DAPPER |
| `lorenz63_sparse` | Lorenz-63, dt_obs 0.5 | all, R = 2 I | 2000 (32) | none |
| `lorenz63_sparse_x1` | as above | x1 only | 2000 (32) | none |
| `lorenz63_sparse_x1sq` | as above | x1^2 | 2000 (32) | none |

The models are `filterax.zoo.presets.lorenz96_bocquet2010`, `lorenz96_spantini2019` and
`lorenz63_sparse` (see their docstrings for the setups and the published tables).
`lorenz96_bocquet2010` runs 4000 cycles rather than DAPPER's 1280: particle-filter scores
depend on rare collapses (DAPPER: "slightly unreliable (short runs)").
"""

from __future__ import annotations

import functools

from filterax.zoo import presets

from ._registry import Benchmark, register_benchmark

__all__ = [
    "L63_SPARSE",
    "L63_SPARSE_X1",
    "L63_SPARSE_X1SQ",
    "L96_BOCQUET2010",
    "L96_SPANTINI2019",
    "register_nongaussian_benchmarks",
]

L96_BOCQUET2010 = "lorenz96_bocquet2010"
L96_SPANTINI2019 = "lorenz96_spantini2019"
L63_SPARSE = "lorenz63_sparse"
L63_SPARSE_X1 = "lorenz63_sparse_x1"
L63_SPARSE_X1SQ = "lorenz63_sparse_x1sq"


def _published(name: str) -> dict:
    table = presets.PUBLISHED_RMSE[name]
    refs = dict(table["rmse_a"])
    return {"references": refs, "citation": table["citation"]}


def register_nongaussian_benchmarks() -> None:
    """Register the benchmarks of the module docstring."""
    l96_clim = dict(presets.PUBLISHED_RMSE["lorenz96_sakov2008"]["rmse_a"])["Climatology"]
    register_benchmark(
        Benchmark(
            name=L96_BOCQUET2010,
            model=presets.lorenz96_bocquet2010,
            n_cycles=4000,
            climatology_rmse=None,
            description="Lorenz-96 N_x=10, sites 0, 2, ..., 8 observed every 0.05, R = 1.5 I",
            **_published(L96_BOCQUET2010),
        )
    )
    register_benchmark(
        Benchmark(
            name=L96_SPANTINI2019,
            model=presets.lorenz96_spantini2019,
            n_cycles=2000,
            climatology_rmse=l96_clim,
            description="Lorenz-96 N_x=40, even sites observed every 0.4 (20 steps), R = 0.5 I",
            **_published(L96_SPANTINI2019),
        )
    )
    # With x1 or x1^2 alone, a Gaussian filter can sit near the climatological error without
    # having diverged (that is what these benchmarks show): only an error beyond the
    # climatological one counts as lost.
    for name, observe, what, lost in (
        (L63_SPARSE, "all", "the state", None),
        (L63_SPARSE_X1, "x1", "x1 only", 1.0),
        (L63_SPARSE_X1SQ, "x1_squared", "x1^2 (sign-blind)", 1.0),
    ):
        extra = {} if lost is None else {"divergence_fraction": lost}
        register_benchmark(
            Benchmark(
                name=name,
                model=functools.partial(presets.lorenz63_sparse, observe=observe),
                n_cycles=2000,
                climatology_rmse=7.6,
                description=f"Lorenz-63 observed every 0.5 (50 RK4 steps): {what}, R = 2",
                **_published(L63_SPARSE),
                **extra,
            )
        )
