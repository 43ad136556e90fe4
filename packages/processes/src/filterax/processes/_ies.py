"""The iterative ensemble smoother (IES) in the ensemble-subspace form of Evensen et al. (2019)."""

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray, ScalarLike

import filterax.primitives as fxp

from ._checks import in_range
from ._converters import as_float
from ._inversion import (
    AbstractInverseSmoother,
    InversionState,
    checked_status,
    draw_perturbations,
    failure_guard,
    no_minibatches,
    skip_if_failed,
)
from ._linalg import mm, stack_factor

__all__ = ["IES", "ExponentialStepLength"]

_VARIANTS = ("subspace",)


class ExponentialStepLength(eqx.Module):
    r"""Evensen's decaying step length for `IES`.

    $$\gamma_i = \gamma_{\min} + (\gamma_{\max} - \gamma_{\min})\,
      2^{-(i - 1)/(\gamma_{\rm dec} - 1)}, \qquad i = 1, 2, \dots$$

    **Arguments:**

    - `max_length`: ``gamma_max``, the first step (default 0.6), in ``(0, 1]``.
    - `min_length`: ``gamma_min``, the limit (default 0.3), in ``(0, max_length]``.
    - `decline`: ``gamma_dec > 1`` (default 2.5): the step halves its excess over
        ``gamma_min`` every ``gamma_dec - 1`` iterations.

    **Reference:** Evensen, Raanes, Stordal & Hove (2019), *Frontiers in Applied Mathematics
    and Statistics* 5:47, eq. (49); Equinor's ``iterative_ensemble_smoother``:
    ``steplength_exponential`` (``halflife = gamma_dec - 1``).

    !!! Example

        ```python
        from filterax.processes import IES, ExponentialStepLength

        ies = IES(n_iter=8, step_length=ExponentialStepLength(0.6, 0.3, 2.5))
        ```
    """

    max_length: Float[ArrayLike, ""] = eqx.field(default=0.6, converter=as_float)
    min_length: Float[ArrayLike, ""] = eqx.field(default=0.3, converter=as_float)
    decline: Float[ArrayLike, ""] = eqx.field(default=2.5, converter=as_float)

    def __check_init__(self) -> None:
        hi, lo, dec = (
            fxp.concrete_value(v) for v in (self.max_length, self.min_length, self.decline)
        )
        if hi is not None and lo is not None and not (0 < lo <= hi <= 1):
            raise ValueError(
                "ExponentialStepLength needs 0 < min_length <= max_length <= 1; got "
                f"min_length={float(lo)}, max_length={float(hi)}."
            )
        if dec is not None and not (np.isfinite(dec) and dec > 1):
            raise ValueError(
                f"ExponentialStepLength(decline=...) must be finite and > 1 (gamma_dec in "
                f"Evensen et al. 2019); got {float(dec)}."
            )

    def _hyperparameters_ok(self) -> Bool[Array, ""]:
        # Traced values: the same ranges as __check_init__ (a traced 0 step would stall IES).
        hi, lo, dec = (jnp.asarray(v) for v in (self.max_length, self.min_length, self.decline))
        return in_range(lo, strict=True) & (lo <= hi) & in_range(hi, high=1.0) & (dec > 1)

    def __call__(self, iteration: ScalarLike) -> Float[Array, ""]:
        """The step length of (1-based) iteration ``i``."""
        i = jnp.asarray(iteration)
        hi = jnp.asarray(self.max_length)
        lo = jnp.asarray(self.min_length)
        dec = jnp.asarray(self.decline)
        return lo + (hi - lo) * 2.0 ** (-(i - 1) / (dec - 1))


class IES(AbstractInverseSmoother):
    r"""Iterative ensemble smoother (ensemble-subspace LM-EnRML; Evensen et al. 2019).

    Each member ``j`` minimises, by Gauss-Newton with the ensemble-averaged sensitivity, the
    randomised-maximum-likelihood cost

    $$J_j(\theta) = \tfrac12\|\theta - \theta^0_j\|^2_{C_\theta^{-1}}
      + \tfrac12\|G(\theta) - d_j\|^2_{\Gamma^{-1}}, \qquad d_j = y + \varepsilon_j,\;
      \varepsilon_j \sim \mathcal N(0, \Gamma)\ \text{(drawn once)},$$

    searched in the span of the prior anomalies: ``theta_j = theta^0_j + A_0 w_j /
    sqrt(N_e - 1)``, ``A_0`` the ``(N_p, N_e)`` prior anomalies, so the unknown is the
    ``(N_e, N_e)`` matrix ``W = [w_1 ... w_N]`` (``W_0 = 0``). With ``Pi = I - 11^T/N_e``,
    ``Y_i = G(Theta_i) Pi / sqrt(N_e - 1)`` and ``A_i = Theta_i Pi``, iteration ``i`` is

    $$S_i = Y_i\,\Omega_i^{-1},\quad \Omega_i = I + W_i\Pi/\sqrt{N_e - 1}
      \qquad (\text{or } S_i = Y_i A_i^+ A_0 \text{ if } N_p < N_e - 1),$$

    $$H_i = S_i W_i + D - G(\Theta_i),$$

    $$W_{i+1} = W_i - \gamma_i\big(W_i - S_i^\top (S_i S_i^\top + \Gamma)^{-1} H_i\big),$$

    the Gauss-Newton step ``(I + S^T Gamma^{-1} S)^{-1} grad J`` written with the push-through
    identity; ``S_i`` is the averaged sensitivity times the prior anomalies, and the
    ``A_i^+ A_i`` projection (Evensen et al. section 2.4.3) keeps it in the span of the
    ensemble when there are fewer parameters than members. The data-space system is solved
    in whitened coordinates in the smaller of the ``N_y`` and ``N_e`` spaces, so diagonal
    ``Gamma`` costs ``O(N_e^2 N_y)`` per iteration (``+ N_e^3`` for ``Omega`` when
    ``N_p >= N_e - 1``, ``+ N_e N_p^2`` otherwise).

    For a linear ``G`` and ``gamma = 1`` the first iteration is the ensemble smoother (the
    stochastic EnKF update of the prior with perturbed observations ``d_j``) exactly, and
    further iterations leave it unchanged (``S_i = G A_0 / sqrt(N_e - 1)`` and ``H_i`` do not
    depend on ``W``).

    IES is a process (``init(ensemble, obs, obs_noise, *, key)``, ``update(state,
    forward_evals)``), so `calibrate` drives it like `EKI` (executors for non-JAX forward
    models, constrained priors; ``until_converged=True`` stops after `n_iter` iterations). Its
    algorithm time step is the step length, ``dt_i = gamma_i``. A member whose evaluation
    failed raises or skips the iteration (`throw`): the subspace step needs every member's
    evaluation, so there is no per-member failure handler. Mini-batches are not supported (the
    perturbed data of the RML costs are drawn once).

    **Arguments:**

    - `n_iter`: the number of iterations (forward-model ensembles evaluated), ``>= 1``.
    - `step_length`: ``gamma`` in ``(0, 1]``: a constant, or a schedule such as
        `ExponentialStepLength` (the default, Evensen's ``0.6 -> 0.3`` with
        ``gamma_dec = 2.5``).
    - `variant`: ``"subspace"`` (the only one).
    - `center_perturbations`: subtract the mean of the ``epsilon_j`` (DAPPER's ``mean0``).
    - `throw`: with non-finite forward evaluations, raise inside jit (``eqx.error_if``,
        default) or, with ``throw=False``, skip that iteration (``W`` and the ensemble are
        kept; `InversionState.n_failed` reports the failed members).

    **Reference:** Y. Chen & D. S. Oliver (2013), "Levenberg-Marquardt forms of the iterative
    ensemble smoother for efficient history matching and uncertainty quantification",
    *Computational Geosciences* 17, 689-703; G. Evensen, P. N. Raanes, A. S. Stordal &
    J. Hove (2019), "Efficient implementation of an iterative ensemble smoother for data
    assimilation and reservoir history matching", *Frontiers in Applied Mathematics and
    Statistics* 5:47. Equinor's ``iterative_ensemble_smoother.SIES``; DAPPER's ``iEnKS``
    with ``upd_a="PertObs"`` (EnRML).

    !!! Example

        ```python
        import jax
        import jax.numpy as jnp
        from filterax.smoothers import IES

        A = jnp.array([[1.0, 0.5], [0.0, 1.0], [1.0, 1.0]])
        forward = lambda th: A @ th + 0.1 * (A @ th) ** 3
        y = forward(jnp.array([0.5, -0.3]))
        prior = jax.random.normal(jax.random.key(0), (100, 2))
        result = IES(n_iter=6).run(forward, prior, y, 0.01, key=jax.random.key(1))
        result.misfit  # decreasing
        ```
    """

    n_iter: int = eqx.field(default=10, static=True)
    step_length: Float[ArrayLike, ""] | ExponentialStepLength = eqx.field(
        default_factory=ExponentialStepLength, converter=as_float
    )
    variant: str = eqx.field(default="subspace", static=True)
    center_perturbations: bool = eqx.field(default=False, static=True)
    throw: bool = eqx.field(default=True, static=True)

    def __check_init__(self) -> None:
        if (
            isinstance(self.n_iter, bool)
            or not isinstance(self.n_iter, int | np.integer)
            or self.n_iter < 1
        ):
            raise ValueError(f"IES(n_iter=...) must be a positive int; got {self.n_iter!r}.")
        if self.variant not in _VARIANTS:
            raise ValueError(
                f"IES(variant=...) must be 'subspace' (Evensen et al. 2019); got {self.variant!r}."
            )
        if not isinstance(self.step_length, ExponentialStepLength):
            if jnp.ndim(self.step_length) != 0:
                raise ValueError(
                    "IES(step_length=...) must be a scalar in (0, 1] or an "
                    f"ExponentialStepLength; got shape {jnp.shape(self.step_length)}."
                )
            value = fxp.concrete_value(self.step_length)
            if value is not None and not 0 < float(value) <= 1:
                raise ValueError(
                    f"IES(step_length=...) must lie in (0, 1] (1 is the full Gauss-Newton "
                    f"step); got {float(value)}."
                )

    def _hyperparameters_ok(self) -> Bool[Array, ""]:
        if isinstance(self.step_length, ExponentialStepLength):
            return jnp.asarray(True)  # checked by its own _hyperparameters_ok
        return in_range(self.step_length, strict=True, high=1.0)

    @property
    def n_steps(self) -> int:
        """``n_iter``, the number of iterations."""
        return int(self.n_iter)

    def gamma(self, iteration: ScalarLike) -> Float[Array, ""]:
        """The step length of (1-based) iteration ``i``."""
        if isinstance(self.step_length, ExponentialStepLength):
            return self.step_length(iteration)
        return jnp.asarray(self.step_length)

    def _needs_key(self) -> bool:
        return True

    def _start(
        self, key: PRNGKeyArray, ensemble: Array, obs: Array, noise: lx.AbstractLinearOperator
    ) -> tuple[Array, Array]:
        # The perturbed data d_j = y + eps_j of the RML costs are drawn once; W_0 = 0.
        n_e = ensemble.shape[0]
        eps = draw_perturbations(key, noise, n_e, ensemble.dtype, self.center_perturbations)
        return eps, jnp.zeros((n_e, n_e), ensemble.dtype)

    def update(
        self,
        state: InversionState,
        forward_evals: Float[ArrayLike, "N_e N_y"],
        *,
        obs: Float[ArrayLike, " N_b"] | None = None,
        obs_noise: fxp.NoiseLike | None = None,
    ) -> InversionState:
        """One Gauss-Newton iteration from ``G`` evaluated at every member of `state.ensemble`.

        **Arguments:**

        - `state`: the current state (from `init` or a previous `update`).
        - `forward_evals`: ``G(theta_j)``, shape ``(N_e, N_y)``.
        - `obs`, `obs_noise`: not supported (the perturbed data ``d_j`` of the RML costs are
            fixed in `init`); passing them raises.

        **Returns:** the next `InversionState` (``dt = gamma_i``).
        """
        no_minibatches(
            "IES",
            obs,
            obs_noise,
            "each member minimises a fixed RML cost whose perturbed data d_j = y + eps_j are "
            "drawn once in init.",
        )
        if state.weights is None:
            raise ValueError(
                "IES.update needs a state from IES.init (it carries the W matrix); got a state "
                "without weights (from ESMDA.init?)."
            )
        x = state.ensemble
        n_e, n_p = x.shape
        dtype = x.dtype
        g = fxp.check_forward_evals(forward_evals, n_e, state.obs.shape[0], dtype=dtype)
        g, failed = failure_guard(g, self.throw, "IES", state.status)
        n_failed = jnp.sum(failed).astype(jnp.int32)
        w = state.weights
        whitening = fxp.noise_whitening(state.obs_noise, dtype)
        gamma, status = checked_status(
            self, state, whitening, self.gamma(state.iteration + 1).astype(dtype), self.throw
        )
        denom = jnp.sqrt(jnp.asarray(n_e - 1, dtype))
        prior_anom = state.prior - jnp.mean(state.prior, axis=0, keepdims=True)  # A_0^T, (N_e, N_p)
        y_rows = whitening.white(g - jnp.mean(g, axis=0, keepdims=True)) / denom  # Y_i^T, whitened
        if n_p < n_e - 1:
            # S_i = Y_i A_i^+ A_0 (Evensen et al. 2.4.3): with A_i^T = Q R,
            # S_i^T = A_0^T R^{-1} Q^T Y_i^T. O(N_e N_p^2), no N_e x N_e solve.
            q, r = jnp.linalg.qr(x - jnp.mean(x, axis=0, keepdims=True), mode="reduced")
            s_rows = mm(prior_anom, jsl.solve_triangular(r, mm(q.T, y_rows), lower=False))
        else:
            # S_i^T = Omega_i^{-T} Y_i^T, Omega_i = I + W_i Pi / sqrt(N_e - 1).
            w_pi = w - jnp.mean(w, axis=1, keepdims=True)
            omega = jnp.eye(n_e, dtype=dtype) + w_pi / denom
            s_rows = jnp.linalg.solve(omega.T, y_rows)
        # H_i^T (whitened) = W_i^T S_i^T + L^{-1}(D - G)^T.
        data = state.obs[None, :] + state.perturbations
        h_rows = mm(w.T, s_rows) + whitening.white(data - g)
        # (S S^T + Gamma)^{-1} in whitened coordinates: (I + F F^T)^{-1}, F = [S~, U~].
        z = fxp.whitened_noise_solve(h_rows, stack_factor(s_rows.T, whitening.factor))
        # gamma = 0 (a bad status) keeps W and the ensemble exactly.
        w_new = jnp.where(gamma > 0, w - gamma * (w - mm(s_rows, z.T)), w)
        updated = jnp.where(gamma > 0, state.prior + mm(w_new.T, prior_anom) / denom, x)
        new = InversionState(
            ensemble=updated,
            prior=state.prior,
            obs=state.obs,
            obs_noise=state.obs_noise,
            perturbations=state.perturbations,
            key=state.key,
            iteration=state.iteration + 1,
            weights=w_new,
            n_failed=n_failed,
            time=state.time + gamma,
            dt=gamma,
            converged=state.iteration + 1 >= self.n_steps,
            status=status,
        )
        # With throw=True a failure has already raised; the select is only needed otherwise.
        return new if self.throw else skip_if_failed(new, state, n_failed)
