"""Standard twin-experiment configurations from the literature, as `StateSpaceModel`s.

Each preset is a function returning a fully configured `StateSpaceModel` whose `name` is
the function's name, whose `reference` is the citation, and whose `published_rmse` holds the
published time-mean analysis RMSEs (``rmse.a``) for that setup. `PUBLISHED_RMSE` collects
the same tables keyed by preset name, each with its citation, for benchmark reference
columns; `PRESETS` maps each name to its constructor.

| preset | model | N_x | dt | dt_obs | observed | R | Sigma | burn-in |
|---|---|---|---|---|---|---|---|---|
| `lorenz63_sakov2012` | Lorenz-63, RK4 | 3 | 0.01 | 0.25 (25 steps) | all | 2 I | - | 16 |
| `lorenz96_sakov2008` | Lorenz-96 F=8, RK4 | 40 | 0.05 | 0.05 | all | I | - | 20 |
| `lorenz63_sparse` | Lorenz-63, RK4 | 3 | 0.01 | 0.5 (50 steps) | all / x1 / x1^2 | 2 I | - | 16 |
| `lorenz96_bocquet2010` | Lorenz-96 F=8, RK4 | 10 | 0.05 | 0.05 | 0, 2, ..., 8 | 1.5 I | - | 20 |
| `lorenz96_spantini2019` | Lorenz-96, RK4 | 40 | 0.02 | 0.4 | 0, 2, .., 38 | 0.5 I | - | 20 |
| `ks_bocquet2019` | KS L=32 pi, ETD-RK4 | 128 | 0.5 | 1.0 (2 steps) | all | I | - | 2000 |
| `linear_bach2025` | x <- A x, A symmetric stable | 40 | 1 | 1 | all / 2nd | I | QQ^T + 0.1 I | 0 |
| `lorenz96_bach2025` | Lorenz-96 F=8, RK4 | 40 | 0.05 | 0.05 | all | I | 0.1 I | 0 |
| `ks_bach2025` | KS L=22, ETD-RK4 | 256 | 0.25 | 1.25 (5 steps) | all | 0.5 I | 0.01 I | 0 |
| `heat1d_sensors` | heat kappa=0.1, exact | 63 | exact | 0.01 | 4 sensors | 0.01 I | 0.01 I | 0 |

Inverse problems (forward maps, not state-space models): `darcy1d_kl` (the calibration
benchmark ``darcy1d``) and `heat1d_initial_condition`.

Time conventions are DAPPER's: observations at ``t0 + k dt_obs`` for ``k >= 1`` (none at
``t0``), scores averaged over analysis times after the burn-in. The process noise of the
Bach et al. (2025) setups is added once per observation window, as in their code.

**Geometry.** The Lorenz-96 and Kuramoto–Sivashinsky presets carry the geometry localising
filters (`filterax.filters.LETKF`) use, as DAPPER's ``nd_Id_localization`` does: grid-index
coordinates ``state_coords = arange(N_x)[:, None]``, the observed rows as ``obs_coords``, and
the periodic distance on the ring of ``N_x`` grid points (`filterax.primitives.
PeriodicDistance(N_x)`; `grid_geometry`). Lorenz-63 and the random linear model have no
spatial structure: their geometry is ``None``.

**Example:**

```python
from filterax.zoo import presets

ssm = presets.lorenz63_sakov2012()
xp = ssm.simulate(jax.random.key(0), ssm.n_cycles)
ens0 = ssm.initial_ensemble(jax.random.key(1), 10)
presets.PUBLISHED_RMSE["lorenz63_sakov2012"]["rmse_a"]["ETKF N=10 infl=1.02 rot"]  # 0.60
```
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from filterax.primitives import IdentityObs, IndexObs, PeriodicDistance, every_nth

from ._ks import KuramotoSivashinsky
from ._linear import LinearModel, random_process_covariance
from ._lorenz import Lorenz63, Lorenz96
from ._pde1d import Darcy1D, HeatEquation1D, HeatInverse1D
from ._ssm import StateSpaceModel

__all__ = [
    "PRESETS",
    "PUBLISHED_RMSE",
    "darcy1d_kl",
    "heat1d_sensors",
    "heat1d_initial_condition",
    "grid_geometry",
    "ks_bach2025",
    "ks_bocquet2019",
    "linear_bach2025",
    "lorenz63_sakov2012",
    "lorenz63_sparse",
    "lorenz96_bach2025",
    "lorenz96_bocquet2010",
    "lorenz96_sakov2008",
    "lorenz96_spantini2019",
]

_HEAT = (
    "filterax tutorial case study '1-D heat-equation DA' (a PDE state-space model with a "
    "ground truth from the PDE); the heat equation as a linear dynamical system as in Law, "
    "Stuart & Zygalakis (2015), Data Assimilation: A Mathematical Introduction, Springer."
)
_SAKOV2012 = (
    "Sakov, P., Oliver, D. S. & Bertino, L. (2012). An iterative EnKF for strongly "
    "nonlinear systems. Monthly Weather Review 140(6), 1988-2004. Setup and scores as "
    "reproduced by DAPPER 1.8.1 (dapper/mods/Lorenz63/sakov2012.py)."
)
_SAKOV2008 = (
    "Sakov, P. & Oke, P. R. (2008). A deterministic formulation of the ensemble Kalman "
    "filter: an alternative to ensemble square root filters. Tellus A 60(2), 361-371. Setup "
    "and scores as reproduced by DAPPER 1.8.1 (dapper/mods/Lorenz96/sakov2008.py)."
)
_BOCQUET2019 = (
    "Bocquet, M. & Farchi, A. (2019). On the consistency of the local ensemble square root "
    "Kalman filter perturbation update. Tellus A 71(1), 1613142. Setup and scores as "
    "reproduced by DAPPER 1.8.1 (dapper/mods/KS/bocquet2019.py)."
)
_BOCQUET2010 = (
    "Bocquet, M., Pires, C. A. & Wu, L. (2010). Beyond Gaussian statistical modeling in "
    "geophysical data assimilation. Monthly Weather Review 138(8), 2997-3023 (Fig. 1). Setup "
    "and scores as reproduced by DAPPER 1.8.1 (dapper/mods/Lorenz96/bocquet2010.py); the "
    "particle-filter rows of REFERENCES.md are an older DAPPER tuning of the same setup."
)
_SPANTINI2019 = (
    "Spantini, A., Baptista, R. & Marzouk, Y. (2022). Coupling techniques for nonlinear "
    "ensemble filtering. SIAM Review 64(4), 921-953 (Fig. 9; arXiv 2019). Setup and scores as "
    "reproduced by DAPPER 1.8.1 (dapper/mods/Lorenz96/spantini2019.py): single runs, on the "
    "edge of stability."
)
_L63_SPARSE = (
    "filterax benchmark for non-Gaussian filtering: Lorenz-63 as in Sakov, Oliver & Bertino "
    "(2012) but observed every 0.5 time units (long windows), of the full state, of x1 only, "
    "or of x1^2 (a sign-blind nonlinear observation). No published scores."
)
_BACH2025 = (
    "Bach, E., Baptista, R., Luk, E. & Stuart, A. M. (2025). Learning optimal filters using "
    "variational inference. arXiv:2406.18066. Section 3.2 (model problems)."
)

PUBLISHED_RMSE: dict[str, dict[str, Any]] = {
    "lorenz63_sakov2012": {
        "citation": _SAKOV2012,
        "rmse_a": {
            "Climatology": 7.6,
            "OptInterp": 1.25,
            "Var3D": 1.04,
            "ExtKF infl=180": 0.92,
            "ETKF N=3 infl=1.30": 0.80,
            "ETKF N=10 infl=1.02 rot": 0.60,
            "EnKF PertObs N=10 infl=1.04": 0.65,
            "EnKF PertObs N=100 infl=1.01": 0.56,
            "EnKF-N N=3": 0.60,
            "EnKF-N N=10 rot": 0.54,
            "iEnKS Lag=1 N=10 infl=1.02 rot": 0.31,
            "PartFilt N=100": 0.38,
            "PartFilt N=800": 0.28,
            "PartFilt N=4000": 0.27,
        },
        "notes": "ExtKF scores 0.87-0.92 for infl in 90-180; DAPPER lists infl=180 -> 0.92.",
    },
    "lorenz63_sparse": {
        "citation": _L63_SPARSE,
        "rmse_a": {},
        "notes": (
            "No published scores: compare with a tuned ETKF and a large-N particle filter on "
            "the same twin."
        ),
    },
    "lorenz96_bocquet2010": {
        "citation": _BOCQUET2010,
        "rmse_a": {
            "EnKF-N N=8 rot xN=1.3": 0.31,
            "PartFilt N=50 NER=0.3 reg=1.7": 1.0,
            "PartFilt N=100 NER=0.2 reg=1.3": 0.36,
            "PartFilt N=800 NER=0.2 reg=0.8": 0.25,
            "OptPF N=50 NER=0.25 reg=1.4 Qs=0.4": 0.61,
            "OptPF N=100 NER=0.2 reg=1.0 Qs=0.3": 0.37,
            "OptPF N=800 NER=0.2 reg=0.6 Qs=0.1": 0.25,
            "PFxN_EnKF N=25 NER=0.4 Qs=1.5 xN=100": 0.49,
            "PFxN_EnKF N=50 NER=0.25 Qs=1.5 xN=100": 0.36,
            "PFxN_EnKF N=100 NER=0.2 Qs=1.0 xN=100": 0.32,
        },
        "notes": (
            "DAPPER's Obs['noise'] = 1.5 is the observation-error VARIANCE (GaussRV(C=1.5)), "
            "so R = 1.5 I (not 1.5^2 I). DAPPER runs T = 64 (1280 cycles) with burn-in 20 and "
            "calls the scores 'slightly unreliable (short runs)'. An older tuning table "
            "(REFERENCES.md): PartFilt N=50/100/800 1.15/0.43/0.29, OptPF 0.75/0.44/0.28, "
            "EnKF_N N=8 0.44."
        ),
    },
    "lorenz96_spantini2019": {
        "citation": _SPANTINI2019,
        "rmse_a": {
            "Climatology": 3.6,
            "OptInterp": 2.5,
            "Var3D": 2.3,
            "ETKF N=40 infl=1.10": 2.2,
            "ETKF N=60 infl=1.10": 1.3,
            "ETKF N=100 infl=1.10": 0.97,
            "LETKF N=40 infl=1.10 loc_rad=4": 1.0,
            "LETKF N=60 infl=1.02 loc_rad=4": 0.89,
            "LETKF N=100 infl=1.02 loc_rad=4": 0.84,
            "iEnKS Lag=2 N=40 infl=1.10": 0.52,
            "iEnKS Lag=2 N=60 infl=1.10": 0.47,
            "iEnKS Lag=2 N=100 xN=1": 0.43,
        },
        "notes": (
            "Single DAPPER runs of 2000 observation cycles; some seeds diverge in DAPPER too. "
            "A tuned localised EnKF reaches 0.885 in TransportBasedInference.jl's benchmark."
        ),
    },
    "lorenz96_sakov2008": {
        "citation": _SAKOV2008,
        "rmse_a": {
            "Climatology": 3.6,
            "OptInterp": 0.95,
            "Var3D": 0.41,
            "ExtKF infl=10": 0.24,
            "EnKF PertObs N=40 infl=1.06": 0.22,
            "DEnKF N=40 infl=1.01": 0.18,
            "ETKF N=24 infl=1.013 rot": 0.18,
            "ETKF N=20 infl=1.04 rot": 0.20,
            "EnSRF serial N=28 infl=1.02 rot": 0.18,
            "EnKF-N N=20": 0.24,
            "EnKF-N N=20 xN=2": 0.19,
            "LETKF N=7 infl=1.04 rot loc_rad=4": 0.22,
            "LETKF N=10 infl=1.04 loc_rad=6": 0.20,
            "iEnKS N=40 infl=1.01 rot": 0.17,
            "PartFilt N=3000": 0.26,
        },
        "notes": (
            "ExtKF infl 6-10 gives ~0.24. PartFilt N=3000 ranges 0.26-0.36 with its tuning "
            "(best: NER=0.5, reg=0.7, KObs=10000)."
        ),
    },
    "ks_bocquet2019": {
        "citation": _BOCQUET2019,
        "rmse_a": {
            "Climatology": 1.3,
            "OptInterp": 0.5,
            "ETKF N=20 infl=1.03 rot": 0.115,
            "LETKF N=4 infl=1.11 rot loc_rad=15/1.82": 0.18,
            "LETKF N=6 infl=1.06 rot loc_rad=25/1.82": 0.14,
            "LETKF N=16 infl=1.02 rot loc_rad=51/1.82": 0.11,
        },
        "notes": "LETKF with Gaspari-Cohn taper; loc_rad = half-width / 1.82.",
    },
    "linear_bach2025": {
        "citation": _BACH2025,
        "rmse_a": {},
        "notes": (
            "No RMSE is published. The learned constant gain converges to the steady-state "
            "Kalman gain (discrete algebraic Riccati equation), for full and every-other-"
            "component observation."
        ),
    },
    "lorenz96_bach2025": {
        "citation": _BACH2025,
        "rmse_a": {
            "Learned constant gain (offline, J=1000), in-sample": 0.536,
            "Learned constant gain (offline, J=1000), out-of-sample": 0.562,
        },
        "notes": (
            "Section 3.4. EnKF tuning (Section 3.5.1): optimal inflation always > 1; N=5 best "
            "at localisation radius < 5 with inflation 1.1-1.2; N=20 best at radius > 20 "
            "with inflation 1.3-1.5 (localisation exp(-d^2/l^2), Ledoit-Wolf shrinkage 0.1)."
        ),
    },
    "ks_bach2025": {
        "citation": _BACH2025,
        "rmse_a": {},
        "notes": "Section 3.5.2 reports loss contours (inflation x radius), not RMSEs.",
    },
    "heat1d_sensors": {
        "citation": _HEAT,
        "rmse_a": {},
        "notes": (
            "A pedagogical PDE twin experiment: no published scores. The truth is the exact "
            "semi-discrete flow, so model error is zero; process noise keeps it from decaying."
        ),
    },
}
"""Published ``rmse.a`` tables, keyed by preset name.

Each entry is ``{"citation": str, "rmse_a": {method label: rmse.a}, "notes": str}``. Labels
name the method with its ensemble size ``N``, multiplicative inflation ``infl``, random
rotation ``rot`` and localisation radius ``loc_rad`` (DAPPER's conventions, see
REFERENCES)."""


def _rmse_items(name: str) -> tuple[tuple[str, float], ...]:
    return tuple(PUBLISHED_RMSE[name]["rmse_a"].items())


def grid_geometry(n_state: int, obs_op: Any) -> dict[str, Any]:
    """The geometry of a periodic 1-D grid of `n_state` points, in grid units.

    ``state_coords = arange(n_state)[:, None]``, ``obs_coords`` its rows that `obs_op`
    observes, and ``distance = PeriodicDistance(n_state)`` (the minimum-image distance on the
    ring): DAPPER's ``nd_Id_localization((n_state,))`` geometry for Lorenz-96 and KS.

    **Arguments:**

    - `n_state`: the number of grid points ``N_x``.
    - `obs_op`: an `IdentityObs` (every point observed) or an `IndexObs` (the points at its
      indices).

    **Returns:** ``{"state_coords": (N_x, 1), "obs_coords": (N_y, 1), "distance": ...}``, the
    keyword arguments of `StateSpaceModel`.

    **Example:**

    ```python
    ssm = StateSpaceModel(Lorenz96(n=40), every_nth(40, 2), 1.0, dt_obs=0.05,
                          x0_mean=jnp.zeros(40), x0_cov=1.0,
                          **grid_geometry(40, every_nth(40, 2)))
    ```
    """
    n_state = int(n_state)
    state = jnp.arange(n_state, dtype=jnp.result_type(float))[:, None]
    if isinstance(obs_op, IdentityObs):
        obs = state
    elif isinstance(obs_op, IndexObs):
        obs = state[obs_op.indices]
    else:
        raise TypeError(
            f"grid_geometry knows point observations (IdentityObs, IndexObs); got "
            f"{type(obs_op).__name__}. Pass state_coords/obs_coords to StateSpaceModel yourself."
        )
    return {
        "state_coords": state,
        "obs_coords": obs,
        "distance": PeriodicDistance(float(n_state)),
    }


def lorenz63_sakov2012() -> StateSpaceModel:
    r"""Lorenz-63 with sparse-in-time observations (Sakov, Oliver & Bertino 2012, Table 1).

    - dynamics: `Lorenz63` (sigma=10, rho=28, beta=8/3), RK4 with ``dt = 0.01``;
    - observations every 25 steps (``dt_obs = 0.25``), all 3 components, ``R = 2 I``;
    - ``x0 ~ N([1.509, -1.531, 25.46], 2 I)`` for the truth and (independently) the
      ensemble;
    - burn-in 16 time units (64 cycles); 1000 cycles (DAPPER's ``KObs=1000``);
    - no geometry (three coupled variables: nothing to localise).

    **Returns:** a `StateSpaceModel`.

    **Reference:** Sakov, Oliver & Bertino (2012), MWR 140. DAPPER equivalent:
    ``dapper.mods.Lorenz63.sakov2012.HMM``.
    """
    name = "lorenz63_sakov2012"
    return StateSpaceModel(
        dynamics=Lorenz63(sigma=10.0, rho=28.0, beta=8.0 / 3.0, dt=0.01),
        obs_op=IdentityObs(),
        obs_noise=2.0,
        dt_obs=0.25,
        x0_mean=jnp.array([1.509, -1.531, 25.46]),
        x0_cov=2.0,
        burn_in=16.0,
        name=name,
        reference=_SAKOV2012,
        n_cycles=1000,
        recommended_n_cycles=1000,
        published_rmse=_rmse_items(name),
    )


def lorenz96_sakov2008() -> StateSpaceModel:
    r"""Lorenz-96, 40 sites, fully and frequently observed (Sakov & Oke 2008).

    - dynamics: `Lorenz96` (n=40, F=8), RK4 with ``dt = 0.05``;
    - observations every step (``dt_obs = 0.05``), all 40 sites, ``R = I``;
    - ``x0 ~ N([1, 0, ..., 0], 0.001 I)`` (the burn-in covers the spin-up onto the
      attractor);
    - burn-in 20 time units (400 cycles); DAPPER runs 1000 cycles (Sakov & Oke: 300000);
    - geometry: grid indices on the ring of 40, ``PeriodicDistance(40)`` (`grid_geometry`),
      so ``LETKF`` needs no coordinates or distance.

    **Returns:** a `StateSpaceModel`.

    **Reference:** Sakov & Oke (2008), Tellus A 60. DAPPER equivalent:
    ``dapper.mods.Lorenz96.sakov2008.HMM``.
    """
    name = "lorenz96_sakov2008"
    n = 40
    return StateSpaceModel(
        dynamics=Lorenz96(n=n, forcing=8.0, dt=0.05),
        obs_op=IdentityObs(),
        obs_noise=1.0,
        dt_obs=0.05,
        x0_mean=jnp.zeros(n).at[0].set(1.0),
        x0_cov=0.001,
        burn_in=20.0,
        name=name,
        reference=_SAKOV2008,
        n_cycles=1000,
        recommended_n_cycles=1000,
        published_rmse=_rmse_items(name),
        **grid_geometry(n, IdentityObs()),
    )


class _SquaredComponent(eqx.Module):
    """``h(x) = x[index]^2``: a sign-blind nonlinear point observation (hashable, so equal
    presets reuse compiled programs)."""

    index: int = eqx.field(static=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x[self.index : self.index + 1] ** 2


_L63_SPARSE_OBS = {
    "all": lambda: IdentityObs(),
    "x1": lambda: IndexObs(jnp.array([0])),
    "x1_squared": lambda: _SquaredComponent(0),
}


def lorenz63_sparse(observe: str = "all") -> StateSpaceModel:
    r"""Lorenz-63 with long assimilation windows and partial or nonlinear observations.

    The non-Gaussian test bed of the particle and flow filters: Gaussian filters are biased
    here (the forecast of a 0.5-time-unit window is far from Gaussian, and ``x1^2`` cannot
    tell the two lobes of the attractor apart).

    - dynamics: `Lorenz63` (sigma=10, rho=28, beta=8/3), RK4 with ``dt = 0.01``;
    - observations every 50 steps (``dt_obs = 0.5``) with ``R = 2 I`` of
      ``observe="all"`` (the state), ``"x1"`` (the first component only) or ``"x1_squared"``
      (``h(x) = x_1^2``);
    - ``x0 ~ N([1.509, -1.531, 25.46], 2 I)`` (as `lorenz63_sakov2012`);
    - burn-in 16 time units (32 cycles); 1000 cycles; no geometry.

    **Arguments:**

    - `observe`: ``"all"``, ``"x1"`` or ``"x1_squared"``.

    **Returns:** a `StateSpaceModel` named ``lorenz63_sparse`` (with the observation in its
    description: ``lorenz63_sparse[x1_squared]``).

    **Reference:** Sakov, Oliver & Bertino (2012) for the system; the long windows and the
    ``x_1^2`` observation follow the non-Gaussian L63 experiments of the particle-filter
    literature (e.g. van Leeuwen et al. 2019, QJRMS 145). No published scores.
    """
    if observe not in _L63_SPARSE_OBS:
        raise ValueError(
            f"lorenz63_sparse(observe=...) must be one of {sorted(_L63_SPARSE_OBS)}; got "
            f"{observe!r}."
        )
    return StateSpaceModel(
        dynamics=Lorenz63(sigma=10.0, rho=28.0, beta=8.0 / 3.0, dt=0.01),
        obs_op=_L63_SPARSE_OBS[observe](),
        obs_noise=2.0,
        dt_obs=0.5,
        x0_mean=jnp.array([1.509, -1.531, 25.46]),
        x0_cov=2.0,
        burn_in=16.0,
        name="lorenz63_sparse" if observe == "all" else f"lorenz63_sparse[{observe}]",
        reference=_L63_SPARSE,
        n_cycles=1000,
        recommended_n_cycles=1000,
        published_rmse=_rmse_items("lorenz63_sparse"),
    )


def lorenz96_bocquet2010() -> StateSpaceModel:
    r"""Lorenz-96 with 10 sites, every other one observed (Bocquet, Pires & Wu 2010, Fig. 1).

    The standard particle-filter test of DAPPER: small enough for a particle filter with a
    few hundred particles, nonlinear enough to separate it from the EnKF.

    - dynamics: `Lorenz96` (n=10, F=8), RK4 with ``dt = 0.05``, no model noise;
    - observations every step (``dt_obs = 0.05``) of sites 0, 2, 4, 6, 8 with
      ``R = 1.5 I`` (DAPPER's ``Obs['noise'] = 1.5`` is a variance);
    - ``x0 ~ N(0, 0.001 I)``; burn-in 20 time units (400 cycles); DAPPER runs 1280 cycles;
    - geometry: grid indices on the ring of 10 (`grid_geometry`).

    **Returns:** a `StateSpaceModel`.

    **Reference:** Bocquet, Pires & Wu (2010), MWR 138. DAPPER equivalent:
    ``dapper.mods.Lorenz96.bocquet2010.HMM``.
    """
    name = "lorenz96_bocquet2010"
    n = 10
    obs_op = every_nth(n, 2)
    return StateSpaceModel(
        dynamics=Lorenz96(n=n, forcing=8.0, dt=0.05),
        obs_op=obs_op,
        obs_noise=1.5,
        dt_obs=0.05,
        x0_mean=jnp.zeros(n),
        x0_cov=0.001,
        burn_in=20.0,
        name=name,
        reference=_BOCQUET2010,
        n_cycles=1280,
        recommended_n_cycles=1280,
        published_rmse=_rmse_items(name),
        **grid_geometry(n, obs_op),
    )


def lorenz96_spantini2019() -> StateSpaceModel:
    r"""Lorenz-96, 40 sites, half observed every 0.4 (Spantini, Baptista & Marzouk, Fig. 9).

    Sparse in space and time: the forecast over 20 model steps is strongly non-Gaussian, the
    setting where transport-map and flow filters beat the (localised) EnKF.

    - dynamics: `Lorenz96` (n=40, F=8), RK4 with ``dt = 0.02``, no model noise;
    - observations every 20 steps (``dt_obs = 0.4``) of sites 0, 2, ..., 38, ``R = 0.5 I``;
    - ``x0 ~ N([1, 0, ..., 0], 0.1 I)``; burn-in 20 time units (50 cycles); DAPPER runs
      2000 cycles;
    - geometry: grid indices on the ring of 40 (`grid_geometry`).

    **Returns:** a `StateSpaceModel`.

    **Reference:** Spantini, Baptista & Marzouk (2022), SIAM Review 64. DAPPER equivalent:
    ``dapper.mods.Lorenz96.spantini2019.HMM``.
    """
    name = "lorenz96_spantini2019"
    n = 40
    obs_op = every_nth(n, 2)
    return StateSpaceModel(
        dynamics=Lorenz96(n=n, forcing=8.0, dt=0.02),
        obs_op=obs_op,
        obs_noise=0.5,
        dt_obs=0.4,
        x0_mean=jnp.zeros(n).at[0].set(1.0),
        x0_cov=0.1,
        burn_in=20.0,
        name=name,
        reference=_SPANTINI2019,
        n_cycles=2000,
        recommended_n_cycles=2000,
        published_rmse=_rmse_items(name),
        **grid_geometry(n, obs_op),
    )


def _ks_bocquet2019_x0(model: KuramotoSivashinsky) -> jax.Array:
    # DAPPER: Kassam-Trefethen's cos(x/16)(1 + sin(x/16)) on the grid x_j = j L / N
    # (j = 1..N), integrated for int(150 / dt) steps so that x0 lies on the attractor.
    u0 = model.initial_condition()
    return model.integrate(u0, int(150.0 / model.dt))


def ks_bocquet2019() -> StateSpaceModel:
    r"""Kuramoto-Sivashinsky, 128 grid points on ``L = 32 pi`` (Bocquet & Farchi 2019).

    - dynamics: `KuramotoSivashinsky` (n=128, L=32 pi), ETD-RK4 with ``dt = 0.5``;
    - observations every 2 steps (``dt_obs = 1.0``), all 128 points, ``R = I``;
    - ``x0 ~ N(u*, 0.001 I)`` where ``u*`` is DAPPER's ``KS.x0``: Kassam & Trefethen's
      ``cos(x/16)(1 + sin(x/16))`` on the grid ``x_j = j L / 128`` (``j = 1..128``)
      integrated for 150 time units (300 steps), i.e. a point on the attractor;
    - burn-in 2000 time units (2000 cycles); DAPPER runs 20000 cycles (``Ko = 2e4``);
    - geometry: grid indices on the ring of 128, ``PeriodicDistance(128)`` (grid units, as
      DAPPER's ``loc_rad``; `grid_geometry`).

    **Returns:** a `StateSpaceModel` (building it integrates the 300-step spin-up once).

    **Reference:** Bocquet & Farchi (2019), Tellus A 71. DAPPER equivalent:
    ``dapper.mods.KS.bocquet2019.HMM``.
    """
    name = "ks_bocquet2019"
    model = KuramotoSivashinsky(n=128, length=32.0 * math.pi, dt=0.5)
    return StateSpaceModel(
        dynamics=model,
        obs_op=IdentityObs(),
        obs_noise=1.0,
        dt_obs=1.0,
        x0_mean=_ks_bocquet2019_x0(model),
        x0_cov=0.001,
        burn_in=2000.0,
        name=name,
        reference=_BOCQUET2019,
        n_cycles=20_000,
        recommended_n_cycles=4000,
        published_rmse=_rmse_items(name),
        **grid_geometry(model.n, IdentityObs()),
    )


def linear_bach2025(
    key: PRNGKeyArray | None = None,
    observe: str = "all",
) -> StateSpaceModel:
    r"""The stable 40-dimensional linear-Gaussian model of Bach et al. (2025), Section 3.2.

    - dynamics: ``x <- A x`` (one step per unit time) with ``A`` from
      `LinearModel.random_stable`: ``W_ij ~ N(0, 1)``, ``W' = (W + W^T)/2``, eigenvalues
      rescaled by ``max |lambda| + 0.1`` (spectral radius < 1);
    - process noise per step ``Sigma = Q Q^T + 0.1 I`` with ``Q_ij ~ N(0, 0.25)``
      (variance 0.25, i.e. standard deviation 0.5; `random_process_covariance`);
    - observations every step, ``R = I``; ``H = I`` (``observe="all"``) or every other
      component ``0, 2, ..., 38`` (``observe="every_other"``, Section 3.3.2);
    - ``x0 ~ N(1, I)`` (``m_0`` a vector of ones as in the paper; ``C_0 = I`` as in the
      authors' code); 1000 cycles, no burn-in;
    - no geometry (``A`` couples every pair of components: nothing to localise).

    **Arguments:**

    - `key`: draws ``A`` (first half of ``split(key)``) and ``Q`` (second half); the
      problem instance is a function of the key. Defaults to ``jax.random.key(0)``.
    - `observe`: ``"all"`` or ``"every_other"``.

    **Returns:** a `StateSpaceModel`; the matrices are ``ssm.dynamics.matrix`` and
    ``ssm.process_noise.as_matrix()``.

    **Reference:** Bach, Baptista, Luk & Stuart (2025), Section 3.2, 3.3.
    """
    if observe not in ("all", "every_other"):
        raise ValueError(f'observe must be "all" or "every_other"; got {observe!r}.')
    name = "linear_bach2025"
    n = 40
    if key is None:
        key = jax.random.key(0)
    key_a, key_q = jax.random.split(key)
    dynamics = LinearModel.random_stable(key_a, n=n)
    sigma = random_process_covariance(key_q, n=n, std=0.5, jitter=0.1)
    # Q Q^T is symmetric in exact arithmetic; symmetrise the round-off away.
    sigma = 0.5 * (sigma + sigma.T)
    obs_op = IdentityObs() if observe == "all" else every_nth(n, 2)
    return StateSpaceModel(
        dynamics=dynamics,
        obs_op=obs_op,
        obs_noise=1.0,
        dt_obs=dynamics.dt,
        x0_mean=jnp.ones(n),
        x0_cov=1.0,
        process_noise=sigma,
        burn_in=0.0,
        name=name,
        reference=_BACH2025,
        n_cycles=1000,
        recommended_n_cycles=1000,
        published_rmse=_rmse_items(name),
    )


def lorenz96_bach2025() -> StateSpaceModel:
    r"""Lorenz-96 with additive process noise, Bach et al. (2025), Section 3.2.

    - dynamics: `Lorenz96` (n=40, F=8), RK4 with ``dt = 0.05``;
    - process noise ``Sigma = 0.1 I`` added at each observation time;
    - observations every step (``dt_obs = 0.05``), ``H = I``, ``R = I``;
    - ``x0 ~ N(0, I)`` (the authors' code draws ``x0 = random.normal(key, (40,))``);
      1000 cycles (J = 1000), no burn-in (their J0 = 0);
    - geometry: grid indices on the ring of 40, ``PeriodicDistance(40)`` (`grid_geometry`).

    The authors start the ensemble at ``N(x0_true, Sigma)``; `initial_ensemble` draws it
    from the prior ``N(0, I)`` instead (DAPPER's convention), so early-cycle errors differ.

    **Returns:** a `StateSpaceModel`.

    **Reference:** Bach, Baptista, Luk & Stuart (2025), Sections 3.2, 3.4, 3.5.1.
    """
    name = "lorenz96_bach2025"
    n = 40
    return StateSpaceModel(
        dynamics=Lorenz96(n=n, forcing=8.0, dt=0.05),
        obs_op=IdentityObs(),
        obs_noise=1.0,
        dt_obs=0.05,
        x0_mean=jnp.zeros(n),
        x0_cov=1.0,
        process_noise=0.1,
        burn_in=0.0,
        name=name,
        reference=_BACH2025,
        n_cycles=1000,
        recommended_n_cycles=1000,
        published_rmse=_rmse_items(name),
        **grid_geometry(n, IdentityObs()),
    )


def ks_bach2025() -> StateSpaceModel:
    r"""Kuramoto-Sivashinsky on ``L = 22`` with 256 points, Bach et al. (2025), Section 3.2.

    - dynamics: `KuramotoSivashinsky` (n=256, L=22), ETD-RK4 with ``dt = 0.25``;
    - observations every 5 steps (``dt_obs = 1.25``), ``H = I``, ``R = 0.5 I``;
    - process noise ``Sigma = 0.01 I`` added at each observation time;
    - ``x0 ~ N(0, I)`` (the authors' code draws ``x0 = random.normal(key, (256,))``);
      200 cycles (J = 200, 1000 model steps), no burn-in;
    - geometry: grid indices on the ring of 256, ``PeriodicDistance(256)`` (`grid_geometry`).

    The authors start the ensemble at ``N(x0_true, Sigma)``; `initial_ensemble` draws it
    from the prior ``N(0, I)`` instead (DAPPER's convention).

    **Returns:** a `StateSpaceModel`.

    **Reference:** Bach, Baptista, Luk & Stuart (2025), Sections 3.2, 3.5.2.
    """
    name = "ks_bach2025"
    n = 256
    return StateSpaceModel(
        dynamics=KuramotoSivashinsky(n=n, length=22.0, dt=0.25),
        obs_op=IdentityObs(),
        obs_noise=0.5,
        dt_obs=1.25,
        x0_mean=jnp.zeros(n),
        x0_cov=1.0,
        process_noise=0.01,
        burn_in=0.0,
        name=name,
        reference=_BACH2025,
        n_cycles=200,
        recommended_n_cycles=200,
        published_rmse=_rmse_items(name),
        **grid_geometry(n, IdentityObs()),
    )


def heat1d_sensors() -> StateSpaceModel:
    r"""The 1-D heat equation observed by four point sensors (pedagogical PDE twin experiment).

    - dynamics: `HeatEquation1D` (``n = 63`` interior points on ``[0, 1]``, ``kappa = 0.1``,
      zero ends), advanced by its exact semi-discrete flow (no time-step error);
    - observations every ``dt_obs = 0.01`` of ``u`` at the grid points nearest to
      ``x = 0.2, 0.4, 0.6, 0.8`` (`IndexObs` of indices 12, 25, 37, 50), ``R = 0.01 I``;
    - process noise ``Sigma = 0.01 I`` per window (without it the truth decays to 0);
    - ``x0 ~ N(0, I)``, 500 cycles, no burn-in, no geometry (the domain is not periodic:
      give ``state_coords = grid`` and ``obs_coords`` yourself to localise).

    High modes are damped within a few windows (``kappa (k pi)^2 dt_obs = 1`` at ``k = 10``),
    the low modes are seen by the sensors: the classic picture of what DA can and cannot
    recover on a diffusive PDE.

    **Returns:** a `StateSpaceModel`.
    """
    name = "heat1d_sensors"
    n = 63
    obs_op = IndexObs(jnp.array([12, 25, 37, 50]))
    return StateSpaceModel(
        dynamics=HeatEquation1D(n=n, diffusivity=0.1, length=1.0, dt=0.01),
        obs_op=obs_op,
        obs_noise=0.01,
        dt_obs=0.01,
        x0_mean=jnp.zeros(n),
        x0_cov=1.0,
        process_noise=0.01,
        burn_in=0.0,
        name=name,
        reference=_HEAT,
        n_cycles=500,
        recommended_n_cycles=500,
        published_rmse=_rmse_items(name),
    )


def darcy1d_kl() -> Darcy1D:
    """The 1-D Darcy forward map of the calibration benchmark ``darcy1d``: 8 KL modes
    (``tau = 3``, ``alpha = 2``) on 128 cells, pressure at 25 interior nodes
    (`Darcy1D.kl` with its defaults)."""
    return Darcy1D.kl(n_modes=8, n_cells=128, n_obs=25)


def heat1d_initial_condition() -> HeatInverse1D:
    """The backward heat problem: 8 sine-mode coefficients of the initial condition
    (prior scales ``1/k``) from sensors at ``x = 0.2, 0.4, 0.6, 0.8`` at ``t = 0.01, 0.02,
    0.05`` (``kappa = 0.1``, ``L = 1``); 12 data, linear forward map (`HeatInverse1D`)."""
    return HeatInverse1D(jnp.array([0.2, 0.4, 0.6, 0.8]), jnp.array([0.01, 0.02, 0.05]), n_modes=8)


PRESETS: dict[str, Callable[..., StateSpaceModel]] = {
    "lorenz63_sakov2012": lorenz63_sakov2012,
    "lorenz96_sakov2008": lorenz96_sakov2008,
    "lorenz63_sparse": lorenz63_sparse,
    "lorenz96_bocquet2010": lorenz96_bocquet2010,
    "lorenz96_spantini2019": lorenz96_spantini2019,
    "ks_bocquet2019": ks_bocquet2019,
    "linear_bach2025": linear_bach2025,
    "lorenz96_bach2025": lorenz96_bach2025,
    "ks_bach2025": ks_bach2025,
    "heat1d_sensors": heat1d_sensors,
}
"""Preset constructors keyed by name (the keys of `PUBLISHED_RMSE`)."""
