r"""The variational cost of the learnable-inflation/localisation EnKF, pointwise and on a grid.

$$J(\lambda, \ell) = \sum_j \Big[\mathrm{KL}\big(\mathcal N(m^a_j, \mathrm{LW}(C^a_j))\,\|\,
\mathcal N(m^f_j, \mathrm{LW}(C^f_j + \Sigma))\big)
- \mathbb E\log\mathcal N(y_j; Hv, \Gamma)\Big]$$

(Bach, Baptista, Luk & Stuart 2025, eq. 2.5 with the Gaussian projection of §2.3; §3.5).
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Real, ScalarLike

import filterax.filters as ff
import filterax.primitives as fxp

from ._enkf_vi import (
    CODE_ASYMMETRIC_ROOT,
    CODE_INVALID_PARAMETERS,
    VariationalEnKF,
)

__all__ = ["EnKFVICost", "enkf_vi_cost", "vi_cost_surface"]

STATUS_OK = 0
STATUS_NONFINITE = 1
STATUS_INVALID_PARAMETERS = 2
STATUS_ASYMMETRIC_ROOT = 3


class EnKFVICost(eqx.Module):
    """The variational cost of one `VariationalEnKF` run (or, from `vi_cost_surface`, of a
    grid of runs: every field gains the leading ``(n_inflation, n_radius)`` axes).

    **Fields:**

    - `value`: ``J = sum_j (kl_j + expected_nll_j)``; NaN unless `status` is ``OK``.
    - `kl`, `expected_nll`: ``(T,)`` the per-cycle terms (`VICycleTerms`).
    - `analysis_mean`: ``(T, N_x)`` the filter's analysis means (for RMSE against a truth).
    - `analysis_spread`: ``(T,)``.
    - `status`: ``0`` ok (`EnKFVICost.OK`), ``1`` a cycle was not finite (`.NONFINITE`),
      ``2`` the inflation or radius was not a finite positive number (`.INVALID_PARAMETERS`),
      ``3`` the symmetric root was asked for where ``I - KH`` is not symmetric
      (`.ASYMMETRIC_ROOT`: pass ``square_root="modified_gain"``).
    """

    value: Float[Array, "*batch"]
    kl: Float[Array, "*batch T"]
    expected_nll: Float[Array, "*batch T"]
    analysis_mean: Float[Array, "*batch T N_x"]
    analysis_spread: Float[Array, "*batch T"]
    status: Int[Array, "*batch"]

    OK: ClassVar[int] = STATUS_OK
    NONFINITE: ClassVar[int] = STATUS_NONFINITE
    INVALID_PARAMETERS: ClassVar[int] = STATUS_INVALID_PARAMETERS
    ASYMMETRIC_ROOT: ClassVar[int] = STATUS_ASYMMETRIC_ROOT


def _is_identity_obs(obs_op: Any, n_x: int) -> bool | None:
    if isinstance(obs_op, fxp.IdentityObs):
        return True
    matrix = None
    if isinstance(obs_op, lx.AbstractLinearOperator):
        matrix = fxp.concrete_value(obs_op.as_matrix())
    elif not callable(obs_op):
        matrix = fxp.concrete_value(obs_op)
    if matrix is None:
        return None
    return matrix.shape == (n_x, n_x) and bool(np.allclose(matrix, np.eye(n_x)))


def _is_isotropic(noise: Any, n_y: int) -> bool | None:
    op = fxp.as_noise_operator(noise, n_y)
    matrix = fxp.concrete_value(op.as_matrix())
    if matrix is None:
        return None
    return bool(np.allclose(matrix, matrix[0, 0] * np.eye(n_y)))


def _check_symmetric_root(model: fxp.AbstractModel, n_x: int, n_y: int) -> None:
    identity = _is_identity_obs(model.obs_op, n_x)
    isotropic = _is_isotropic(model.obs_noise, n_y)
    if identity is False or isotropic is False:
        raise ValueError(
            "square_root='symmetric' (the authors' (I - KH)^{1/2}) needs H = I and an "
            "isotropic obs_noise Gamma = gamma I, where I - KH is symmetric positive definite; "
            "this model has another H or Gamma. Pass square_root='modified_gain' (a valid "
            "square root for any linear H)."
        )


def _check_inputs(model: Any, ensemble: Any, observations: Any) -> tuple[int, int]:
    if not isinstance(model, fxp.AbstractModel):
        raise TypeError(
            "model must be a filterax.primitives.AbstractModel (e.g. fxp.Model(dynamics, obs_op, "
            f"obs_noise, process_noise=Sigma) or a filterax.zoo.StateSpaceModel); got "
            f"{type(model).__name__}."
        )
    fxp.check_ensemble(ensemble, "ensemble (the (N_e, N_x) initial ensemble)")
    obs_shape = jnp.shape(observations)
    if len(obs_shape) != 2:
        raise ValueError(
            f"observations must be (T, N_y), one row per observation time; got {obs_shape}."
        )
    return jnp.shape(ensemble)[1], obs_shape[1]


def _cost(
    model: fxp.AbstractModel,
    ensemble: Array,
    observations: Array,
    obs_times: Array,
    inflation: Any,
    radius: Any,
    key: PRNGKeyArray,
    shrinkage: Any,
    n_samples: int,
    likelihood: str,
    square_root: str,
    t0: Any,
    adjoint: Any = None,
) -> EnKFVICost:
    method = VariationalEnKF(
        inflation=inflation,
        radius=radius,
        shrinkage=shrinkage,
        n_samples=n_samples,
        likelihood=likelihood,
        square_root=square_root,
    )
    out = ff.run(
        method,
        model,
        ensemble,
        observations,
        obs_times,
        key=key,
        t0=t0,
        throw=False,
        **({} if adjoint is None else {"adjoint": adjoint}),
    )
    terms = out.diagnostics
    codes = terms.code
    status = jnp.where(
        jnp.any(codes == CODE_INVALID_PARAMETERS),
        STATUS_INVALID_PARAMETERS,
        jnp.where(
            jnp.any(codes == CODE_ASYMMETRIC_ROOT),
            STATUS_ASYMMETRIC_ROOT,
            jnp.where(out.status == ff.RunResult.OK, STATUS_OK, STATUS_NONFINITE),
        ),
    ).astype(jnp.int32)
    total = jnp.sum(terms.kl + terms.expected_nll)
    ok = (status == STATUS_OK) & jnp.isfinite(total)
    status = jnp.where((status == STATUS_OK) & ~ok, STATUS_NONFINITE, status).astype(jnp.int32)
    value = jnp.where(ok, total, jnp.nan)
    return EnKFVICost(
        value=value,
        kl=terms.kl,
        expected_nll=terms.expected_nll,
        analysis_mean=out.analysis_mean,
        analysis_spread=out.analysis_spread,
        status=status,
    )


def enkf_vi_cost(
    model: fxp.AbstractModel,
    ensemble: Float[ArrayLike, "N_e N_x"],
    observations: Float[ArrayLike, "T N_y"],
    obs_times: Real[ArrayLike, " T"],
    *,
    inflation: ScalarLike,
    radius: ScalarLike,
    key: PRNGKeyArray,
    shrinkage: ScalarLike = 0.1,
    n_samples: int = 10,
    likelihood: str = "gaussian_projection",
    square_root: str = "symmetric",
    t0: ScalarLike | None = None,
    adjoint: ff.AbstractAdjoint | None = None,
) -> EnKFVICost:
    r"""The variational cost ``J(lambda, l)`` of the EnKF with inflation ``lambda`` and
    localisation radius ``l`` over a whole run (one `filterax.filters.run` of
    `VariationalEnKF`).

    $$J(\lambda, \ell) = \sum_{j=1}^{T}\Big[\mathrm{KL}\big(\mathcal N(m^a_j, \mathrm{LW}(C^a_j))
    \,\|\,\mathcal N(m^f_j, \mathrm{LW}(C^f_j + \Sigma))\big)
    - \mathbb E_v \log \mathcal N(y_j; Hv, \Gamma)\Big],$$

    the expectation over the Gaussian projection (default, the authors' code), the members
    (the paper's formula) or in closed form (see `VariationalEnKF`). Differentiable in
    ``(lambda, l)``: for gradient descent optimise ``u = log(lambda), log(l)`` (a positive
    reparameterisation), e.g. ``jax.grad(lambda u: enkf_vi_cost(..., inflation=jnp.exp(u[0]),
    radius=jnp.exp(u[1]), ...).value)``. The Monte Carlo draws come from `key` (cycle ``k``
    uses ``fold_in(key, k)``), so the same key gives the same cost and a reparameterised,
    deterministic gradient.

    **Arguments:**

    - `model`: an `AbstractModel`: deterministic ``dynamics``, ``obs_op`` (``H``),
      ``obs_noise`` (``Gamma``) and ``process_noise`` (``Sigma``, added to the forecast
      covariance; ``None`` for 0).
    - `ensemble`: ``(N_e, N_x)`` initial ensemble at ``t0`` (the paper: ``N(x_0^true, Sigma)``).
    - `observations`: ``(T, N_y)``, NaN where missing; `obs_times`: ``(T,)``.
    - `inflation`, `radius`: ``lambda > 0``, ``l > 0`` (concrete bad values raise
      `ValueError`; traced ones give `status` 2 and a NaN value).
    - `key`: PRNG key of the likelihood draws.
    - `shrinkage`, `n_samples`, `likelihood`, `square_root`: see `VariationalEnKF`.
    - `t0`: time of `ensemble` (default ``model.t0``).
    - `adjoint`: how `jax.grad` goes through the run (`filterax.filters.run`'s `adjoint`;
      default `FullAdjoint`). The value is the same for every choice. Over a long chaotic run
      the exact gradient grows like ``e^{λ_1 T}`` and points anywhere (on the L96 surface
      problem, J = 250 cycles, it drives the radius up while the cost rises); descend with
      ``TruncatedAdjoint(window)``, windows short against the predictability time.

    **Returns:** an `EnKFVICost` (``.value`` is ``J``; check ``.status``).

    **Departures from the paper:** those of `VariationalEnKF`. The log-likelihood carries its
    full constant ``-(p/2) log 2 pi - (1/2) log|Gamma|`` per observed cycle; the authors' code
    has ``-(1/2) log 2 pi`` per step instead (only absolute values differ: add
    ``0.5 J log 2 pi + 0.5 #obs log|Gamma|`` to the negative log-likelihood to compare, e.g.
    ``-3236`` for their L96 surface; `VI_REPRODUCTION.md` §2). One key serves every grid
    point (common random numbers), where the authors drew a fresh key per point.

    **Reference:** Bach, Baptista, Luk & Stuart (2025), eq. (2.5), §2.3, §3.5, App. A.6.

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        from filterax.learn import enkf_vi_cost

        cost = enkf_vi_cost(model, ens0, y, times, inflation=1.2, radius=4.0,
                            key=jax.random.key(0))
        def cost(u):  # u = log(lambda), log(l): a positive reparameterisation
            return enkf_vi_cost(model, ens0, y, times, inflation=jnp.exp(u[0]),
                                radius=jnp.exp(u[1]), key=jax.random.key(0)).value

        grad = jax.grad(cost)(jnp.log(jnp.array([1.2, 4.0])))
        ```
    """
    n_x, n_y = _check_inputs(model, ensemble, observations)
    for name, value in (("inflation", inflation), ("radius", radius)):
        fxp.check_parameter(
            value,
            f"enkf_vi_cost({name}=...)",
            low=0.0,
            low_open=True,
            allow_inf=False,
            hint="Pass a positive number.",
            traced=False,
        )
    if square_root == "symmetric":
        _check_symmetric_root(model, n_x, n_y)
    if t0 is None:
        t0 = model.t0
    return _cost(
        model,
        jnp.asarray(ensemble),
        jnp.asarray(observations),
        jnp.asarray(obs_times),
        inflation,
        radius,
        key,
        shrinkage,
        n_samples,
        likelihood,
        square_root,
        t0,
        adjoint,
    )


@eqx.filter_jit
def _surface(
    model,
    ensemble,
    observations,
    obs_times,
    inflations,
    radii,
    key,
    shrinkage,
    n_samples,
    likelihood,
    square_root,
    t0,
):
    lam, ell = jnp.meshgrid(inflations, radii, indexing="ij")

    def one(lam_, ell_):
        return _cost(
            model,
            ensemble,
            observations,
            obs_times,
            lam_,
            ell_,
            key,
            shrinkage,
            n_samples,
            likelihood,
            square_root,
            t0,
        )

    return jax.vmap(jax.vmap(one))(lam, ell)


def vi_cost_surface(
    model: fxp.AbstractModel,
    ensemble: Float[ArrayLike, "N_e N_x"],
    observations: Float[ArrayLike, "T N_y"],
    obs_times: Real[ArrayLike, " T"],
    inflations: Float[ArrayLike, " n_inflation"],
    radii: Float[ArrayLike, " n_radius"],
    *,
    key: PRNGKeyArray,
    shrinkage: ScalarLike = 0.1,
    n_samples: int = 10,
    likelihood: str = "gaussian_projection",
    square_root: str = "symmetric",
    t0: ScalarLike | None = None,
) -> EnKFVICost:
    r"""The cost ``J(lambda, l)`` of `enkf_vi_cost` on the whole grid ``inflations x radii``
    as ONE compiled, doubly vmapped program (the paper's Figs 5–6).

    $$J_{ab} = J(\lambda_a, \ell_b),\qquad a = 1..n_\lambda,\ b = 1..n_\ell.$$

    Every grid point uses the same `key` (common random numbers: differences between grid
    points are not Monte Carlo noise; the authors drew a fresh key per point).

    **Arguments:** as `enkf_vi_cost`, with `inflations` ``(n_inflation,)`` and `radii`
    ``(n_radius,)`` 1-D arrays of positive values (concrete non-positive entries raise
    `ValueError`; traced ones give status 2 at that grid point).

    **Returns:** an `EnKFVICost` whose fields lead with ``(n_inflation, n_radius)``; the grid
    optimum is ``jnp.unravel_index(jnp.nanargmin(out.value), out.value.shape)``.

    **Reference:** Bach, Baptista, Luk & Stuart (2025), §3.5, Figs 5–6.
    """
    n_x, n_y = _check_inputs(model, ensemble, observations)
    for name, values in (("inflations", inflations), ("radii", radii)):
        if jnp.ndim(values) != 1:
            raise ValueError(
                f"vi_cost_surface({name}=...) must be a 1-D array of grid values; got shape "
                f"{jnp.shape(values)}."
            )
        fxp.check_parameter(
            values,
            f"vi_cost_surface({name}=...)",
            low=0.0,
            low_open=True,
            allow_inf=False,
            hint="Pass positive grid values.",
            traced=False,
        )
    if square_root == "symmetric":
        _check_symmetric_root(model, n_x, n_y)
    if t0 is None:
        t0 = model.t0
    # Validate the static options once, eagerly (the vmapped constructor sees tracers).
    VariationalEnKF(
        inflation=1.0,
        radius=1.0,
        shrinkage=shrinkage,
        n_samples=n_samples,
        likelihood=likelihood,
        square_root=square_root,
    )
    ensemble = jnp.asarray(ensemble)
    dtype = ensemble.dtype if jnp.issubdtype(ensemble.dtype, jnp.floating) else None
    return _surface(
        model,
        ensemble,
        jnp.asarray(observations),
        jnp.asarray(obs_times),
        jnp.asarray(inflations, dtype),
        jnp.asarray(radii, dtype),
        key,
        shrinkage,
        n_samples,
        likelihood,
        square_root,
        t0,
    )
