"""Time-step (learning-rate) schedulers for ensemble Kalman processes.

A scheduler is an ``fxp.AbstractScheduler``: ``state = scheduler.init()`` and
``dt, state = scheduler.step(state, misfits, **info)``. The processes of this package pass
``time`` (algorithm time so far), ``n_obs`` (data dimension), ``d_norm`` (the Frobenius norm of
the EKS matrix ``D``) and ``iteration`` as ``info``; misfits of failed members are NaN and are
left out of every statistic.
"""

from __future__ import annotations

from typing import Any, Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Scalar

import filterax.primitives as fxp

from ._checks import check_hyperparameter, in_range
from ._converters import as_float

__all__ = [
    "DataMisfitController",
    "DataMisfitControllerState",
    "EKSStableScheduler",
    "FixedScheduler",
]


def _require(info: dict[str, Any], name: str, scheduler: str) -> Any:
    if name not in info:
        raise TypeError(
            f"{scheduler}.step needs the keyword `{name}`; the filterax processes pass it. "
            f"When calling the scheduler yourself, pass `{name}=...`."
        )
    return info[name]


class FixedScheduler(fxp.AbstractScheduler):
    r"""A constant algorithm time step.

    $$\Delta t_n = \Delta t.$$

    **Arguments:**

    - `dt`: the step (default ``1.0``, one full Kalman update per iteration). A dynamic field:
        it may be traced, swept with `jax.vmap` or differentiated.

    **Reference:** EnsembleKalmanProcesses.jl: ``DefaultScheduler(dt)``.

    !!! Example

        ```python
        from filterax.processes import EKI, FixedScheduler

        eki = EKI(scheduler=FixedScheduler(0.5))
        ```
    """

    dt: Float[ArrayLike, ""] = eqx.field(default=1.0, converter=as_float)

    def __check_init__(self) -> None:
        check_hyperparameter(
            self.dt,
            "FixedScheduler(dt=...)",
            hint=" It is the algorithm time step (EKI: 1 is one full Kalman update).",
        )

    def _hyperparameters_ok(self) -> Bool[Array, ""]:
        return in_range(self.dt)

    def init(self) -> None:
        return None

    def step(self, state: None, misfits: Float[Array, " N_e"], **info: Any) -> tuple[Scalar, None]:
        dtype = jnp.result_type(misfits)
        return jnp.asarray(self.dt, dtype=dtype), None


class DataMisfitControllerState(eqx.Module):
    """State of a `DataMisfitController`.

    **Fields:**

    - `reached`: the final time ``T`` has been reached.
    - `terminated`: ``on_terminate="stop"`` and ``T`` has been reached: every further ``dt`` is
        0 (the processes mirror it in `ProcessState.converged`).
    - `last_dt`: the last step returned (used by ``on_terminate="continue_fixed"``).
    """

    reached: Bool[Array, ""]
    terminated: Bool[Array, ""]
    last_dt: Float[Array, ""]


class DataMisfitController(fxp.AbstractScheduler):
    r"""Adaptive step from the data misfit (Iglesias & Yang 2021), landing exactly on ``T``.

    With the per-member misfits $\Phi_j = \tfrac12\|\Gamma^{-1/2}(G(\theta_j) - y)\|^2$ and
    the data dimension $d$,

    $$q_n = \max\Big(\frac{d}{2\,\overline{\Phi}},\; \sqrt{\frac{d}{2\,\mathrm{Var}(\Phi)}}\Big),
    \qquad \Delta t_n = \min(q_n,\; T - t_n),$$

    (sample variance with Bessel correction, failed members left out). The last step is
    ``T - t_n`` exactly, so the algorithm time lands on ``T`` (bit-exactly for ``T = 1``). For
    stochastic EKI this is Bayesian tempering: the products of the tempered likelihoods
    ``exp(-dt_n Phi)`` multiply to the full likelihood when the steps sum to 1, so the ensemble
    at ``T = 1`` approximates the posterior.

    What happens once ``T`` is reached (``on_terminate``):

    - ``"stop"`` (default): the update that lands on ``T`` sets `terminated` (and
        `ProcessState.converged`); every later ``dt`` is 0, i.e. the update is the identity.
    - ``"continue"``: keeps stepping with ``dt = q_n`` (no longer capped by ``T - t``).
    - ``"continue_fixed"``: keeps stepping with the last ``dt``.

    Needs the keywords ``time`` and ``n_obs`` in ``step`` (the processes pass them).

    **Arguments:**

    - `terminate_at`: the final algorithm time ``T`` (default 1.0).
    - `on_terminate`: ``"stop"``, ``"continue"`` or ``"continue_fixed"`` (static).

    **Reference:** M. Iglesias & Y. Yang (2021), "Adaptive regularisation for ensemble Kalman
    inversion", *Inverse Problems* 37, 025008. EnsembleKalmanProcesses.jl:
    ``DataMisfitController(terminate_at=1, on_terminate="stop")``, the default scheduler of its
    ``Inversion`` and ``TransformInversion``.

    !!! Example

        ```python
        from filterax.processes import EKI, DataMisfitController

        eki = EKI(scheduler=DataMisfitController(terminate_at=1.0, on_terminate="stop"))
        ```
    """

    terminate_at: Float[ArrayLike, ""] = eqx.field(default=1.0, converter=as_float)
    on_terminate: Literal["stop", "continue", "continue_fixed"] = eqx.field(
        default="stop", static=True
    )

    def __check_init__(self) -> None:
        if self.on_terminate not in ("stop", "continue", "continue_fixed"):
            raise ValueError(
                "DataMisfitController(on_terminate=...) must be 'stop', 'continue' or "
                f"'continue_fixed'; got {self.on_terminate!r}."
            )
        check_hyperparameter(
            self.terminate_at,
            "DataMisfitController(terminate_at=...)",
            strict=True,
            hint=" It is the final algorithm time T (1: the posterior); to keep stepping "
            "after T use on_terminate='continue'.",
        )

    def _hyperparameters_ok(self) -> Bool[Array, ""]:
        # A traced T <= 0 would stop the process at once with status OK.
        return in_range(self.terminate_at, strict=True)

    def init(self) -> DataMisfitControllerState:
        return DataMisfitControllerState(
            reached=jnp.asarray(False),
            terminated=jnp.asarray(False),
            last_dt=jnp.asarray(0.0),
        )

    def step(
        self, state: DataMisfitControllerState, misfits: Float[Array, " N_e"], **info: Any
    ) -> tuple[Scalar, DataMisfitControllerState]:
        time = jnp.asarray(_require(info, "time", "DataMisfitController"))
        n_obs = _require(info, "n_obs", "DataMisfitController")
        dtype = jnp.result_type(misfits, time)
        misfits = jnp.asarray(misfits, dtype)
        time = time.astype(dtype)
        final = jnp.asarray(self.terminate_at, dtype)
        # A final time reached up to round-off (T != 1 need not be hit bit-exactly) counts.
        tol = 4 * jnp.finfo(dtype).eps * final
        reached = time >= final - tol

        ok = jnp.isfinite(misfits)
        n_ok = jnp.sum(ok)
        clean = jnp.where(ok, misfits, 0.0)
        mean = jnp.sum(clean) / jnp.maximum(n_ok, 1)
        var = jnp.sum(jnp.where(ok, (clean - mean) ** 2, 0.0)) / jnp.maximum(n_ok - 1, 1)
        d = jnp.asarray(n_obs, dtype)
        # Zero mean misfit or zero spread makes a candidate infinite, i.e. "step straight to
        # T" (as EnsembleKalmanProcesses.jl); after T, "continue" then keeps the last step.
        q_mean = jnp.where(mean > 0, d / (2 * jnp.where(mean > 0, mean, 1.0)), jnp.inf)
        q_var = jnp.where(var > 0, jnp.sqrt(d / (2 * jnp.where(var > 0, var, 1.0))), jnp.inf)
        q = jnp.maximum(q_mean, q_var)
        last = state.last_dt.astype(dtype)
        before = jnp.minimum(q, final - time)
        if self.on_terminate == "stop":
            after = jnp.zeros((), dtype)
        elif self.on_terminate == "continue":
            after = jnp.where(jnp.isfinite(q), q, last)
        else:
            after = last
        dt = jnp.where(reached, after, before)
        reached_after = (time + dt) >= final - tol
        terminated = reached_after if self.on_terminate == "stop" else jnp.asarray(False)
        new_state = DataMisfitControllerState(
            reached=reached_after | state.reached,
            terminated=terminated | state.terminated,
            last_dt=dt.astype(state.last_dt.dtype),
        )
        return dt, new_state


class EKSStableScheduler(fxp.AbstractScheduler):
    r"""The step known to keep the ensemble Kalman sampler stable.

    $$\Delta t_n = \frac{\alpha}{\|D\|_F + \varepsilon}, \qquad
    D_{ij} = \frac1J \langle G(\theta_i) - \overline{G},\, \Gamma^{-1}(G(\theta_j) - y)\rangle.$$

    Needs the keyword ``d_norm`` (``||D||_F``) in ``step``; every filterax process passes it.

    **Arguments:**

    - `alpha`: the numerator (default 1).
    - `eps`: the nugget keeping ``dt`` finite when ``D = 0`` (default 1e-8).

    **Reference:** A. Garbuno-Iñigo, F. Hoffmann, W. Li & A. M. Stuart (2020), "Interacting
    Langevin diffusions: gradient structure and ensemble Kalman sampler", *SIAM J. Appl. Dyn.
    Syst.* 19, 412-441. EnsembleKalmanProcesses.jl: ``EKSStableScheduler(1.0, eps())``, the
    default scheduler of its ``Sampler``.

    !!! Example

        ```python
        from filterax.processes import EKS, EKSStableScheduler

        eks = EKS(prior_mean, prior_cov, scheduler=EKSStableScheduler(alpha=0.1))
        ```
    """

    alpha: Float[ArrayLike, ""] = eqx.field(default=1.0, converter=as_float)
    eps: Float[ArrayLike, ""] = eqx.field(default=1e-8, converter=as_float)

    def __check_init__(self) -> None:
        check_hyperparameter(self.alpha, "EKSStableScheduler(alpha=...)", strict=True)
        check_hyperparameter(self.eps, "EKSStableScheduler(eps=...)", strict=True)

    def _hyperparameters_ok(self) -> Bool[Array, ""]:
        return in_range(self.alpha, strict=True) & in_range(self.eps, strict=True)

    def init(self) -> None:
        return None

    def step(self, state: None, misfits: Float[Array, " N_e"], **info: Any) -> tuple[Scalar, None]:
        d_norm = jnp.asarray(_require(info, "d_norm", "EKSStableScheduler"))
        dtype = jnp.result_type(misfits, d_norm)
        dt = jnp.asarray(self.alpha, dtype) / (d_norm.astype(dtype) + jnp.asarray(self.eps, dtype))
        return dt, None
