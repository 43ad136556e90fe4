"""Inflation of a process's ensemble after each update, in the filters' vocabulary.

The `inflation=` argument of every ensemble process (`EKI`, `ETKI`, `TEKI`, `SparseInversion`,
`EKS`) takes, alone or as a tuple applied in order:

- any `filterax.primitives.AbstractInflator`, the inflators the filters take
  (`MultiplicativeInflator`, `AdditiveInflator`, `RTPS`, `RTPP`, or your own), applied once per
  update as ``inflator(updated, previous, key=...)``: the "forecast" is the ensemble before
  the update, so `RTPS`/`RTPP` relax towards the spread of the iteration's prior;
- EnsembleKalmanProcesses.jl's time-step-aware inflation (`AbstractInflation`):
  `MultiplicativeInflation` is ``fxp.MultiplicativeInflator((1 - s dt)^{-1/2})`` and
  `AdditiveInflation` ``fxp.AdditiveInflator(s dt / (1 - s dt) * cov)`` at time step ``dt``,
  so their strength follows the scheduler and ``dt = 0`` is the identity.

A process whose time step is 0 (after a stopping scheduler terminated) leaves its ensemble
unchanged, inflation included.
"""

# No `from __future__ import annotations`: the `InflationLike` alias is used at runtime.
import abc
from typing import Any, TypeAlias

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray, ScalarLike

import filterax.primitives as fxp

from ._checks import check_hyperparameter, check_noise_entries, in_range
from ._converters import as_float

__all__ = [
    "AbstractInflation",
    "AdditiveInflation",
    "InflationLike",
    "MultiplicativeInflation",
    "apply_inflation",
    "check_inflation",
]


class AbstractInflation(eqx.Module):
    """A ``dt``-aware inflation applied after each update (EnsembleKalmanProcesses.jl style).

    ``inflation(key, ensemble, dt) -> ensemble``; ``dt = 0`` must be the identity. At a fixed
    ``dt`` it is one of the `filterax.primitives` inflators (see the subclasses); the processes
    also take those directly (`InflationLike`).
    """

    @abc.abstractmethod
    def __call__(
        self, key: PRNGKeyArray, ensemble: Float[Array, "N_e N_p"], dt: ScalarLike
    ) -> Float[Array, "N_e N_p"]:
        """Inflate the updated ensemble."""


InflationLike: TypeAlias = (
    AbstractInflation
    | fxp.AbstractInflator
    | tuple[AbstractInflation | fxp.AbstractInflator, ...]
    | None
)
"""What a process's `inflation=` takes: a dt-aware `AbstractInflation`, any
`filterax.primitives.AbstractInflator`, a tuple of them (applied in order), or None."""


_S_HINT = " It scales the time step (s * dt < 1); 0 switches the inflation off."


def _checked_step(s: ScalarLike, dt: ScalarLike, dtype: Any, owner: str) -> Array:
    scaled = jnp.asarray(s, dtype) * jnp.asarray(dt, dtype)
    return eqx.error_if(
        scaled, scaled >= 1, f"{owner} needs s * dt < 1; reduce s or the time step."
    )


class MultiplicativeInflation(AbstractInflation):
    r"""Scale the anomalies so the covariance grows by ``1 / (1 - s dt)``.

    $$\theta_j \leftarrow \bar\theta + (1 - s\,\Delta t)^{-1/2} (\theta_j - \bar\theta),$$

    the discrete form of adding ``s C`` to the covariance dynamics for a time ``dt``: at a given
    ``dt`` it is ``filterax.primitives.MultiplicativeInflator((1 - s dt)^{-1/2})`` (the filters'
    multiplicative inflator, whose factor multiplies the anomalies). Needs ``s dt < 1``
    (checked inside `jit` with `eqx.error_if`).

    **Arguments:**

    - `s`: the time-step scaling (default 1).

    **Reference:** EnsembleKalmanProcesses.jl: ``multiplicative_inflation!(ekp; s)``
    (Lopez-Gomez et al. 2022, *JAMES*).

    !!! Example

        ```python
        from filterax.processes import EKI, FixedScheduler, MultiplicativeInflation

        eki = EKI(scheduler=FixedScheduler(0.1), inflation=MultiplicativeInflation(0.5))
        ```
    """

    s: Float[ArrayLike, ""] = eqx.field(default=1.0, converter=as_float)

    def __check_init__(self) -> None:
        check_hyperparameter(self.s, "MultiplicativeInflation(s=...)", hint=_S_HINT)

    def _hyperparameters_ok(self) -> Bool[Array, ""]:
        # A traced negative s would deflate the ensemble with status OK.
        return in_range(self.s)

    def __call__(
        self, key: PRNGKeyArray, ensemble: Float[Array, "N_e N_p"], dt: ScalarLike
    ) -> Float[Array, "N_e N_p"]:
        scaled = _checked_step(self.s, dt, ensemble.dtype, "MultiplicativeInflation")
        factor = 1.0 / jnp.sqrt(1.0 - scaled)
        # A traced NaN `s` is reported by the state's status (INVALID_HYPERPARAMETERS) and the
        # process does not move; a neutral factor keeps the primitive's own check quiet.
        factor = jnp.where(jnp.isnan(factor), jnp.ones_like(factor), factor)
        return fxp.inflate_multiplicative(ensemble, factor)


class AdditiveInflation(AbstractInflation):
    r"""Add Gaussian noise with covariance ``s dt / (1 - s dt) * cov`` to every member.

    $$\theta_j \leftarrow \theta_j + \xi_j, \qquad
    \xi_j \sim \mathcal N\big(0, \tfrac{s\Delta t}{1 - s\Delta t}\,\Sigma\big),$$

    i.e. ``filterax.primitives.AdditiveInflator`` with that covariance at a given ``dt``. The
    draws use the structure of ``Sigma`` (`filterax.primitives.perturbed_observations`: a
    low-rank-plus-diagonal ``Sigma`` is never densified) and are exactly zero at ``dt = 0``.

    **Arguments:**

    - `cov`: ``Sigma`` over the parameters: a scalar variance, a vector of variances, a matrix
        or a lineax operator (any form `filterax.primitives.as_noise_operator` accepts).
    - `s`: the time-step scaling (default 1); needs ``s dt < 1``.

    **Reference:** EnsembleKalmanProcesses.jl: ``additive_inflation!(ekp, cov; s)``.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.processes import EKI, AdditiveInflation, FixedScheduler

        eki = EKI(scheduler=FixedScheduler(0.1), inflation=AdditiveInflation(jnp.ones(3)))
        ```
    """

    cov: fxp.NoiseLike
    s: Float[ArrayLike, ""] = eqx.field(default=1.0, converter=as_float)

    def __check_init__(self) -> None:
        check_hyperparameter(self.s, "AdditiveInflation(s=...)", hint=_S_HINT)
        name = "AdditiveInflation(cov=...)"
        check_noise_entries(self.cov, name, semidefinite=True, hint="")
        # Matrices and operators: symmetric positive semidefinite (sizes are their own), and
        # positive definite when dense: the draws use its Cholesky factor.
        if isinstance(self.cov, lx.AbstractLinearOperator) or jnp.ndim(self.cov) == 2:
            n = self.cov.in_size() if isinstance(self.cov, lx.AbstractLinearOperator) else None
            n = jnp.shape(self.cov)[0] if n is None else n
            op = fxp.positive_definite_noise(self.cov, n, name=name, semidefinite=True)
            if fxp.noise_structure(op) == "dense":
                fxp.positive_definite_noise(op, n, name=name + " (dense, drawn by Cholesky)")

    def _hyperparameters_ok(self) -> Bool[Array, ""]:
        # A traced negative s would give sqrt(s dt / (1 - s dt)) = NaN with status OK.
        return in_range(self.s)

    def __call__(
        self, key: PRNGKeyArray, ensemble: Float[Array, "N_e N_p"], dt: ScalarLike
    ) -> Float[Array, "N_e N_p"]:
        dtype = ensemble.dtype
        scaled = _checked_step(self.s, dt, dtype, "AdditiveInflation")
        n_e, n_p = ensemble.shape
        draws = fxp.perturbed_observations(key, jnp.zeros(n_p, dtype), self.cov, n_e)
        # A traced covariance is only known here: a negative variance has a NaN square root.
        draws = eqx.error_if(
            draws,
            ~jnp.all(jnp.isfinite(draws)),
            "AdditiveInflation(cov=...) must be a finite positive-semidefinite covariance "
            "(positive definite when dense); its square root has non-finite entries (a "
            "negative or NaN variance, or a dense matrix that is not positive definite).",
        )
        return ensemble + jnp.sqrt(scaled / (1.0 - scaled)) * draws


def _steps(inflation: InflationLike) -> tuple[Any, ...]:
    if inflation is None:
        return ()
    return inflation if isinstance(inflation, tuple) else (inflation,)


def apply_inflation(
    inflation: InflationLike,
    key: PRNGKeyArray,
    ensemble: Array,
    dt: Array,
    previous: Array | None = None,
) -> Array:
    """Apply each inflation in turn; ``previous`` is the ensemble before the update."""
    for index, step in enumerate(_steps(inflation)):
        step_key = jax.random.fold_in(key, index)
        if isinstance(step, AbstractInflation):
            ensemble = step(step_key, ensemble, dt)
        else:
            ensemble = step(ensemble, previous, key=step_key)
    return ensemble


def check_inflation(inflation: Any, owner: str) -> None:
    steps = inflation if isinstance(inflation, tuple) else (inflation,)
    if inflation is not None and not all(
        isinstance(s, AbstractInflation | fxp.AbstractInflator) for s in steps
    ):
        raise TypeError(
            f"{owner}(inflation=...) must be a MultiplicativeInflation or AdditiveInflation "
            "(dt-aware, EnsembleKalmanProcesses.jl), a filterax.primitives inflator "
            "(MultiplicativeInflator, AdditiveInflator, RTPS, RTPP), a tuple of them, or None; "
            f"got {inflation!r}."
        )
