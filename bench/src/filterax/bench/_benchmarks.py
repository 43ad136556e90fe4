"""The built-in benchmarks: the zoo presets plus two Lorenz-96 variants.

| name | model | observed | cycles (burn-in) | references |
|---|---|---|---|---|
| `lorenz63_sakov2012` | Lorenz-63, dt_obs 0.25 | all, R = 2 I | 5000 (64) | DAPPER |
| `lorenz96_sakov2008` | Lorenz-96 N_x=40, dt_obs 0.05 | all, R = I | 5000 (400) | DAPPER |
| `lorenz96_every_other` | as above | 0, 2, ..., 38 | 5000 (400) | none |
| `lorenz96_small_ensemble` | as above, N_e <= 10 | all | 5000 (400) | DAPPER LETKF rows |
| `ks_bocquet2019` | Kuramoto-Sivashinsky N_x=128 | all, R = I | 4000 (2000) | DAPPER |
| `linear_bach2025` | 40-d linear + process noise | all, R = I | 1000 (0) | none (KF optimal) |
| `linear_bach2025_every_other` | as above | every other | 1000 (0) | none (KF optimal) |
| `lorenz96_bach2025` | Lorenz-96 + noise 0.1 I | all, R = I | 1000 (0) | Bach et al. 2025 |
| `ks_bach2025` | KS L=22 N_x=256 + noise | all, R = 0.5 I | 200 (0) | none |

Localised filters take the geometry from the model: the Lorenz-96 and KS models carry
grid-index coordinates with the periodic distance (DAPPER's ``nd_Id_localization``: distances
in grid points on the ring; `filterax.zoo.presets.grid_geometry`). The linear models have no
geometry of their own; their benchmarks pass the same ring geometry as overrides
(``coordinates=grid_coordinates, distance=periodic_distance(40)``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp

from filterax.primitives import IdentityObs, IndexObs, PeriodicDistance, every_nth
from filterax.zoo import StateSpaceModel, presets

from ._benchmarks_async import register_async_benchmarks
from ._benchmarks_nongaussian import register_nongaussian_benchmarks
from ._registry import Benchmark, register_benchmark

__all__ = ["grid_coordinates", "periodic_distance"]


def periodic_distance(period: float | int) -> Any:
    """Minimum-image distance on a ring of length `period` (grid-index units).

    `filterax.primitives.PeriodicDistance` (hashable: equal periods reuse compiled programs).
    """
    return PeriodicDistance(float(period))


def grid_coordinates(model: StateSpaceModel) -> dict[str, Any]:
    """``state_coords`` = grid indices ``(N_x, 1)``; ``obs_coords`` = the observed indices.

    Works for `IdentityObs` and `IndexObs` observation operators (the point-observation
    operators of the built-in benchmarks).
    """
    n = model.n_state
    state = jnp.arange(n, dtype=model.x0_mean.dtype)[:, None]
    obs_op = model.obs_op
    if isinstance(obs_op, IdentityObs):
        obs = state
    elif isinstance(obs_op, IndexObs):
        obs = state[obs_op.indices]
    else:
        raise TypeError(
            f"grid_coordinates knows IdentityObs and IndexObs; got {type(obs_op).__name__}. "
            "Give the Benchmark its own coordinates=... function."
        )
    return {"state_coords": state, "obs_coords": obs}


def _published(name: str) -> tuple[dict[str, float], str, float | None]:
    table = presets.PUBLISHED_RMSE[name]
    refs = dict(table["rmse_a"])
    return refs, table["citation"], refs.get("Climatology")


def _lorenz96_every_other() -> StateSpaceModel:
    base = presets.lorenz96_sakov2008()
    obs_op = every_nth(base.n_state, 2)
    return StateSpaceModel(
        dynamics=base.dynamics,
        obs_op=obs_op,
        obs_noise=1.0,
        dt_obs=base.dt_obs,
        x0_mean=base.x0_mean,
        x0_cov=base.x0_cov,
        burn_in=base.burn_in,
        name="lorenz96_every_other",
        reference=base.reference,
        n_cycles=base.n_cycles,
        recommended_n_cycles=base.recommended_n_cycles,
        **presets.grid_geometry(base.n_state, obs_op),
    )


def _register_builtin() -> None:
    refs, cite, clim = _published("lorenz63_sakov2012")
    register_benchmark(
        Benchmark(
            name="lorenz63_sakov2012",
            model=presets.lorenz63_sakov2012,
            n_cycles=5000,
            references=refs,
            citation=cite,
            climatology_rmse=clim,
            description="Lorenz-63, all observed every 0.25 (25 RK4 steps), R = 2 I",
        )
    )
    refs, cite, clim = _published("lorenz96_sakov2008")
    register_benchmark(
        Benchmark(
            name="lorenz96_sakov2008",
            model=presets.lorenz96_sakov2008,
            n_cycles=5000,
            references=refs,
            citation=cite,
            climatology_rmse=clim,
            description="Lorenz-96 N_x=40 F=8, all observed every 0.05, R = I",
        )
    )
    register_benchmark(
        Benchmark(
            name="lorenz96_every_other",
            model=_lorenz96_every_other,
            n_cycles=5000,
            citation=(
                "Lorenz-96 setup of Sakov & Oke (2008) with only the even components observed; "
                "no published scores (compare with lorenz96_sakov2008)."
            ),
            climatology_rmse=clim,
            description="Lorenz-96 N_x=40, components 0, 2, ..., 38 observed, R = I",
        )
    )
    small_refs = {k: v for k, v in refs.items() if k.startswith("LETKF") or k == "Climatology"}
    register_benchmark(
        Benchmark(
            name="lorenz96_small_ensemble",
            model=presets.lorenz96_sakov2008,
            n_cycles=5000,
            references=small_refs,
            citation=cite,
            climatology_rmse=clim,
            max_ensemble=10,
            description=(
                "Lorenz-96 sakov2008 with N_e <= 10 < 14 unstable modes: localisation matters"
            ),
        )
    )
    refs, cite, clim = _published("ks_bocquet2019")
    register_benchmark(
        Benchmark(
            name="ks_bocquet2019",
            model=presets.ks_bocquet2019,
            n_cycles=4000,
            references=refs,
            citation=cite,
            # DAPPER's bocquet2019.py gives its baselines to one decimal
            reference_rounding={"Climatology": 0.05, "OptInterp": 0.05},
            climatology_rmse=clim,
            description="Kuramoto-Sivashinsky N_x=128 L=32pi, all observed every 1.0, R = I",
        )
    )
    refs, cite, _ = _published("linear_bach2025")
    register_benchmark(
        Benchmark(
            name="linear_bach2025",
            model=presets.linear_bach2025,
            n_cycles=1000,
            references=refs,
            citation=cite,
            coordinates=grid_coordinates,
            distance=periodic_distance(40),
            divergence_fraction=1.0,
            description="40-d stable linear model with process noise, all observed, R = I",
        )
    )
    register_benchmark(
        Benchmark(
            name="linear_bach2025_every_other",
            model=functools.partial(presets.linear_bach2025, observe="every_other"),
            n_cycles=1000,
            references=refs,
            citation=cite,
            coordinates=grid_coordinates,
            distance=periodic_distance(40),
            divergence_fraction=1.0,
            description="40-d stable linear model with process noise, every other observed",
        )
    )
    refs, cite, _ = _published("lorenz96_bach2025")
    register_benchmark(
        Benchmark(
            name="lorenz96_bach2025",
            model=presets.lorenz96_bach2025,
            n_cycles=1000,
            references=refs,
            citation=cite,
            description="Lorenz-96 N_x=40 with process noise 0.1 I, all observed, R = I",
        )
    )
    refs, cite, _ = _published("ks_bach2025")
    register_benchmark(
        Benchmark(
            name="ks_bach2025",
            model=presets.ks_bach2025,
            n_cycles=200,
            references=refs,
            citation=cite,
            description="Kuramoto-Sivashinsky L=22 N_x=256 with process noise, R = 0.5 I",
        )
    )
    register_async_benchmarks()
    register_nongaussian_benchmarks()


_register_builtin()
