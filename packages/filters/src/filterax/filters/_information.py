r"""The information filter: the Kalman filter in natural parameters ``eta = P^{-1} mu``,
``Lambda = P^{-1}``.

`InformationFilter` is an `AbstractKalmanFilter` whose state is an `InformationState`
``(eta, Lambda)``. The state also answers ``.mean`` and ``.cov`` (by solving with
``Lambda``), so `GaussianFilter` and `filterax.filters.run` cycle it exactly like
`KalmanFilter`; the legacy ``filter`` and the ensemble ``analysis`` come with the base class.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Scalar, ScalarLike

import filterax.primitives as fxp
from filterax.primitives import mask_noise

from ._kalman import (
    AbstractKalmanFilter,
    _check_mean,
    _linear_dynamics_matrix,
    _linearize_dynamics,
    _linearize_obs,
    _mm,
    _noise_operator,
    _sym,
)

__all__ = ["InformationFilter", "InformationState"]

_PSD = (lx.symmetric_tag, lx.positive_semidefinite_tag)
_LOG_2PI = math.log(2.0 * math.pi)


def _solve_columns(op: lx.AbstractLinearOperator, rhs: Array, solver: Any) -> Array:
    """``op^{-1} rhs`` column by column (one factorisation: the operator is not batched)."""
    return jax.vmap(
        lambda b: lx.linear_solve(op, b, solver, throw=False).value, in_axes=1, out_axes=1
    )(rhs)


def _tridiagonal_logdet(op: lx.TridiagonalLinearOperator) -> Array:
    # LDL^T of a symmetric tridiagonal matrix: d_1 = a_1, d_i = a_i - b_{i-1}^2 / d_{i-1};
    # log det = sum log d_i (NaN when it is not positive definite).
    def step(d_prev, ab):
        a, b = ab
        d = a - b**2 / d_prev
        return d, d

    a, b = op.diagonal, op.lower_diagonal
    _, ds = jax.lax.scan(step, a[0], (a[1:], b))
    return jnp.log(a[0]) + jnp.sum(jnp.log(ds))


class InformationState(eqx.Module):
    r"""A Gaussian ``N(mu, P)`` in natural parameters: ``eta = P^{-1} mu``, ``Lambda = P^{-1}``.

    **Fields:**

    - `eta`: ``(N_x,)`` the information vector.
    - `precision`: ``Lambda``, an ``(N_x, N_x)`` matrix or, for
      ``InformationFilter(structure="tridiagonal")``, an `lx.TridiagonalLinearOperator`
      (``O(N_x)`` storage).

    ``mean`` (``Lambda^{-1} eta``) and ``cov`` (``Lambda^{-1}``, dense) are computed on
    request by lineax solves (Cholesky, or the tridiagonal solver), for ONE state (not for the
    stacked beliefs of a run).
    """

    eta: Float[Array, " N_x"]
    precision: Float[Array, "N_x N_x"] | lx.TridiagonalLinearOperator

    @property
    def precision_operator(self) -> lx.AbstractLinearOperator:
        """``Lambda`` as a lineax operator (tagged symmetric positive semidefinite)."""
        if isinstance(self.precision, lx.AbstractLinearOperator):
            return self.precision
        return lx.MatrixLinearOperator(self.precision, _PSD)

    def _solver(self) -> Any:
        return lx.Tridiagonal() if self._tridiagonal else lx.Cholesky()

    @property
    def _tridiagonal(self) -> bool:
        return isinstance(self.precision, lx.TridiagonalLinearOperator)

    @property
    def mean(self) -> Float[Array, " N_x"]:
        """``Lambda^{-1} eta``."""
        return lx.linear_solve(self.precision_operator, self.eta, self._solver(), throw=False).value

    @property
    def cov(self) -> Float[Array, "N_x N_x"]:
        """``Lambda^{-1}`` (dense: the covariance of a tridiagonal precision is full)."""
        n = self.eta.shape[0]
        eye = jnp.eye(n, dtype=self.eta.dtype)
        return _sym(_solve_columns(self.precision_operator, eye, self._solver()))

    def precision_matrix(self) -> Float[Array, "N_x N_x"]:
        """``Lambda`` as a dense matrix."""
        return self.precision_operator.as_matrix()

    def logdet_precision(self) -> Scalar:
        """``log det Lambda`` (Cholesky / tridiagonal LDL^T; NaN unless positive definite)."""
        if self._tridiagonal:
            return _tridiagonal_logdet(self.precision)
        chol = jnp.linalg.cholesky(self.precision)
        return 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))


def _psd_factor(op: lx.AbstractLinearOperator, n: int, dtype: Any) -> Array:
    """``G`` with ``G G^T = Q``: square roots of a diagonal, an eigen-factor otherwise (so a
    singular ``Q`` is fine)."""
    if lx.is_diagonal(op):
        return jnp.diag(jnp.sqrt(jnp.maximum(lx.diagonal(op).astype(dtype), 0.0)))
    mat = op.as_matrix().astype(dtype)
    evals, evecs = jnp.linalg.eigh(_sym(mat))
    return evecs * jnp.sqrt(jnp.maximum(evals, 0.0))[None, :]


def _dynamics_matrix(
    dynamics: Any, state: InformationState, t0: Any, t1: Any
) -> tuple[Array, Array]:
    """``(M, c)``: the dynamics as ``x -> M x + c`` (``c = 0`` for a matrix or operator; for a
    callable, the Jacobian at the mean and the offset that makes the map exact there)."""
    n, dtype = state.eta.shape[0], state.eta.dtype
    matrix = _linear_dynamics_matrix(dynamics, n, dtype)
    if matrix is not None:
        return matrix, jnp.zeros(n, dtype)
    mean = state.mean
    mean_f, M = _linearize_dynamics(dynamics, mean, t0, t1, "rev")
    return M, mean_f - _mm(M, mean)


def _row_span_ok(H: Array) -> Array:
    """Whether every row of ``H`` touches at most two neighbouring state components (so that
    ``H^T R^{-1} H`` is tridiagonal for a diagonal ``R``)."""
    nz = H != 0
    n = H.shape[1]
    first = jnp.argmax(nz, axis=1)
    last = n - 1 - jnp.argmax(nz[:, ::-1], axis=1)
    return jnp.all(~jnp.any(nz, axis=1) | (last - first <= 1))


class InformationFilter(AbstractKalmanFilter):
    r"""The Kalman filter in information (natural-parameter) form.

    The belief ``N(\mu, P)`` is carried as ``\eta = P^{-1}\mu`` and ``\Lambda = P^{-1}``.
    The update is additive (each observation adds its information):

    $$\Lambda^a = \Lambda^f + H^\top R^{-1} H,\qquad \eta^a = \eta^f + H^\top R^{-1} y,$$

    so assimilating the components of ``y`` one at a time (diagonal ``R``), in any order,
    gives the batch update exactly. A callable ``obs_op`` is linearised at the forecast mean
    (the extended information filter: ``y`` is replaced by ``y - h(\mu^f) + H \mu^f``).
    The predict is Anderson & Moore's information-form predict, with
    ``\Phi = M^{-\top} \Lambda^a M^{-1}`` and ``Q = G G^\top``:

    $$\Lambda^f = \Phi - \Phi G (I + G^\top \Phi G)^{-1} G^\top \Phi,\qquad
    \eta^f = \big(I - \Phi G (I + G^\top \Phi G)^{-1} G^\top\big) M^{-\top} \eta^a
    + \Lambda^f c,$$

    the Woodbury form of ``\Lambda^f = (M \Lambda^{-1} M^\top + Q)^{-1}``. Only
    ``I + G^\top \Phi G`` (positive definite) and ``M`` (a flow map: invertible) are
    factorised; ``\Lambda`` is never inverted in the predict, so a singular ``Q`` (or none)
    and a diffuse prior (``\Lambda = 0`` in some directions, with a matrix ``M``) are fine.
    ``c`` is the offset of an affine map (``0`` for a matrix; for a callable,
    ``f(\mu) - M\mu`` with ``M`` its Jacobian at the mean). The log-likelihood uses the
    determinant lemma,

    $$\log p(y) = -\tfrac12\big[N_y \log 2\pi + \log|R| + \log|\Lambda^a| - \log|\Lambda^f|
    + v^\top R^{-1} v - u^\top (\Lambda^a)^{-1} u\big],\quad v = y - H\mu^f,\ u = H^\top
    R^{-1} v .$$

    Missing (NaN) observation entries carry no information (zero rows of ``H``).

    **Structure** (`structure`, static): ``"dense"`` (default) keeps ``\Lambda`` as a dense
    matrix. ``"tridiagonal"`` keeps it an `lx.TridiagonalLinearOperator` (``O(N_x)``
    storage, solves and log-determinants): the update keeps a tridiagonal ``\Lambda``
    tridiagonal when ``R`` is diagonal and every row of ``H`` touches at most two
    neighbouring components (point observations, two-point averages), and the predict keeps it
    when ``M`` is diagonal (a static state ``M = I`` included) and there is no process noise.
    Anything else would fill ``\Lambda`` in; it is refused — a ``ValueError`` at trace time
    for a non-diagonal ``R`` or process noise, an ``eqx.error_if`` error for an ``H`` or
    ``M`` outside the band — rather than truncated.

    **Arguments:**

    - `structure`: ``"dense"`` or ``"tridiagonal"``.

    **Why a subclass of `AbstractKalmanFilter`:** it is a Kalman filter (the same beliefs,
    to round-off), so it shares the kernel contract (``init``/``predict``/``update``),
    `GaussianFilter`, ``filter`` and ``analysis``; only the state differs, and
    `InformationState` exposes ``mean``/``cov`` so that the shared code needs no change.

    **Reference:** B. D. O. Anderson and J. B. Moore (1979), *Optimal Filtering*, §6.3 (the
    information filter, predict via the matrix inversion lemma); A. G. O. Mutambara (1998),
    *Decentralized Estimation and Control for Multisensor Systems* (the extended information
    filter). DAPPER has no information filter.

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.filters import InformationFilter, KalmanFilter

    inf = InformationFilter()
    state = inf.init(jnp.zeros(2), jnp.eye(2))
    state = inf.predict(state, jnp.array([[1.0, 0.1], [0.0, 1.0]]), 0.01)
    state, loglik = inf.update(state, jnp.array([0.3, jnp.nan]), jnp.eye(2), 0.5)
    state.mean, state.cov  # == KalmanFilter's to round-off
    ```
    """

    structure: str = eqx.field(default="dense", static=True)

    def __check_init__(self) -> None:
        if self.structure not in ("dense", "tridiagonal"):
            raise ValueError(
                'InformationFilter.structure must be "dense" or "tridiagonal"; got '
                f"{self.structure!r}."
            )

    @property
    def _tridiagonal(self) -> bool:
        return self.structure == "tridiagonal"

    # --- initial states ---------------------------------------------------------------

    def init(self, mean: Float[ArrayLike, " N_x"], cov: Any) -> InformationState:
        """The state of ``N(mean, cov)``: ``Lambda = cov^{-1}`` (`cov` positive definite: a
        matrix, scalar, variances or operator; ``"tridiagonal"`` takes a diagonal one),
        ``eta = Lambda mean``."""
        mean = _check_mean(mean)
        n, dtype = mean.shape[0], mean.dtype
        op = _noise_operator(cov, n, dtype, "cov")
        fxp.positive_definite_noise(op, n, name="InformationFilter.init: cov")
        if lx.is_diagonal(op):
            precision = 1.0 / lx.diagonal(op).astype(dtype)
            if self._tridiagonal:
                zeros = jnp.zeros(n - 1, dtype)
                return InformationState(
                    precision * mean, lx.TridiagonalLinearOperator(precision, zeros, zeros)
                )
            return InformationState(precision * mean, jnp.diag(precision))
        if self._tridiagonal:
            raise ValueError(
                "InformationFilter(structure='tridiagonal').init needs a diagonal cov (a "
                "scalar, variances or a DiagonalLinearOperator); for a tridiagonal precision "
                "pass it directly: init_information(eta, lx.TridiagonalLinearOperator(...))."
            )
        matrix = lx.MatrixLinearOperator(op.as_matrix().astype(dtype), _PSD)
        precision = _sym(_solve_columns(matrix, jnp.eye(n, dtype=dtype), lx.Cholesky()))
        return InformationState(_mm(precision, mean), precision)

    def init_sqrt(
        self, mean: Float[ArrayLike, " N_x"], factor: Float[ArrayLike, "N_x r"]
    ) -> InformationState:
        """The state of ``N(mean, F F^T)``; ``F`` needs at least ``N_x`` columns (a rank-
        deficient covariance has no precision matrix)."""
        mean = _check_mean(mean)
        factor = jnp.asarray(factor)
        n = mean.shape[0]
        if factor.ndim != 2 or factor.shape[0] != n or factor.shape[1] < n:
            raise ValueError(
                f"InformationFilter.init_sqrt: factor must be an (N_x, r) matrix with N_x={n} "
                f"rows and r >= N_x columns (F F^T must be invertible); got shape "
                f"{factor.shape}. An ensemble with N_e <= N_x has a singular covariance: use "
                "KalmanFilter or SquareRootKF for it."
            )
        factor = factor.astype(mean.dtype)
        return self.init(mean, _mm(factor, factor.T))

    def init_information(self, eta: Float[ArrayLike, " N_x"], precision: Any) -> InformationState:
        """The state with information vector `eta` and precision `precision` (a matrix or a
        lineax operator; an `lx.TridiagonalLinearOperator` for ``"tridiagonal"``). A
        singular (diffuse) precision is allowed: `predict` (with a matrix ``M``) and `update`
        (with a matrix ``H``) never invert it."""
        eta = _check_mean(eta)
        n, dtype = eta.shape[0], eta.dtype
        if self._tridiagonal:
            if not isinstance(precision, lx.TridiagonalLinearOperator):
                raise TypeError(
                    "InformationFilter(structure='tridiagonal') keeps the precision as an "
                    "lx.TridiagonalLinearOperator; got "
                    f"{type(precision).__name__}. Build one from its three diagonals."
                )
            if precision.in_size() != n:
                raise ValueError(
                    f"the precision must be {n} x {n} like eta; got size {precision.in_size()}."
                )
            lower = precision.lower_diagonal.astype(dtype)
            return InformationState(
                eta, lx.TridiagonalLinearOperator(precision.diagonal.astype(dtype), lower, lower)
            )
        matrix = (
            precision.as_matrix()
            if isinstance(precision, lx.AbstractLinearOperator)
            else jnp.asarray(precision)
        )
        if matrix.shape != (n, n):
            raise ValueError(
                f"the precision must be an (N_x, N_x) = ({n}, {n}) matrix like eta; got shape "
                f"{matrix.shape}."
            )
        values = fxp.concrete_value(matrix)
        if values is not None and not np.all(np.isfinite(values)):
            raise ValueError("the precision matrix has non-finite entries; pass a finite one.")
        return InformationState(eta, _sym(matrix.astype(dtype)))

    # --- kernels ----------------------------------------------------------------------

    def predict(
        self,
        state: InformationState,
        dynamics: Any,
        process_noise: Any = None,
        t0: ScalarLike = 0.0,
        t1: ScalarLike = 1.0,
    ) -> InformationState:
        """Anderson & Moore's information predict (see the class docstring)."""
        _check_information_state(state)
        n, dtype = state.eta.shape[0], state.eta.dtype
        M, offset = _dynamics_matrix(dynamics, state, t0, t1)
        if self._tridiagonal:
            return _tridiagonal_predict(state, M, offset, process_noise)
        lu = lx.LU()
        Mt = lx.MatrixLinearOperator(M.T)
        # Phi = M^{-T} Lambda M^{-1}: two solves with M^T (Lambda symmetric).
        left = _solve_columns(Mt, state.precision, lu)
        phi = _sym(_solve_columns(Mt, left.T, lu))
        eta = lx.linear_solve(Mt, state.eta, lu, throw=False).value  # M^{-T} eta
        if process_noise is not None:
            op = _noise_operator(process_noise, n, dtype, "process_noise")
            G = _psd_factor(op, n, dtype)
            phi_g = _mm(phi, G)
            inner = lx.MatrixLinearOperator(
                _sym(jnp.eye(G.shape[1], dtype=dtype) + _mm(G.T, phi_g)), _PSD
            )
            # (I + G^T Phi G)^{-1} G^T Phi and (I + G^T Phi G)^{-1} G^T M^{-T} eta
            reduce = _solve_columns(inner, phi_g.T, lx.Cholesky())
            eta = eta - _mm(
                phi_g, lx.linear_solve(inner, _mm(G.T, eta), lx.Cholesky(), throw=False).value
            )
            phi = _sym(phi - _mm(phi_g, reduce))
        return InformationState(eta + _mm(phi, offset), phi)

    def update(
        self,
        state: InformationState,
        obs: Float[ArrayLike, " N_y"],
        obs_op: Any,
        obs_noise: Any,
    ) -> tuple[InformationState, Scalar]:
        """Add the observation's information (NaN = missing); returns ``(state, log p(obs))``."""
        _check_information_state(state)
        dtype = state.eta.dtype
        mean_f = state.mean
        predicted, H = _linearize_obs(obs_op, mean_f, "rev")
        n_y = H.shape[0]
        obs = jnp.asarray(obs)
        if obs.shape != (n_y,):
            raise ValueError(
                f"obs must be a 1-D vector of length N_y={n_y} (what obs_op returns); got "
                f"shape {obs.shape}. Use NaN for missing entries."
            )
        obs = obs.astype(dtype)
        mask = fxp.observation_mask(obs)
        y = jnp.where(mask, obs, 0.0)
        innovation = jnp.where(mask, y - predicted, 0.0)
        H = jnp.where(mask[:, None], H, 0.0)
        R = mask_noise(_noise_operator(obs_noise, n_y, dtype, "obs_noise"), mask)
        diagonal_R = lx.is_diagonal(R)
        if diagonal_R:
            r = lx.diagonal(R).astype(dtype)
            W = H / r[:, None]  # R^{-1} H
            logdet_R = jnp.sum(jnp.log(r))
            whitened_v = innovation / jnp.sqrt(r)
        else:
            Rm = lx.MatrixLinearOperator(_sym(R.as_matrix().astype(dtype)), _PSD)
            W = _solve_columns(Rm, H, lx.Cholesky())
            chol_R = jnp.linalg.cholesky(Rm.matrix)
            logdet_R = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol_R)))
            whitened_v = jax.scipy.linalg.solve_triangular(chol_R, innovation, lower=True)
        # The information in y: H^T R^{-1} y for a linear H; y - h(mu) + H mu (the extended
        # information filter) for a linearised one.
        linear = isinstance(obs_op, lx.AbstractLinearOperator | jax.Array | np.ndarray) or (
            callable(getattr(obs_op, "matrix", None))
        )
        target = y if linear else jnp.where(mask, innovation + _mm(H, mean_f), 0.0)
        eta_a = state.eta + _mm(W.T, target)
        if self._tridiagonal:
            if not diagonal_R:
                raise ValueError(
                    "InformationFilter(structure='tridiagonal') needs a diagonal obs_noise "
                    "(scalar, variances or DiagonalLinearOperator): a correlated R fills the "
                    "precision in. Use structure='dense'."
                )
            H = eqx.error_if(
                H,
                ~_row_span_ok(H),
                "InformationFilter(structure='tridiagonal'): a row of the observation "
                "operator's matrix touches state components more than one apart, so "
                "H^T R^{-1} H is not tridiagonal and the precision would fill in. Use "
                "structure='dense'.",
            )
            prec = state.precision
            main = prec.diagonal + jnp.sum(W * H, axis=0)
            off = prec.lower_diagonal + jnp.sum(W[:, :-1] * H[:, 1:], axis=0)
            precision = lx.TridiagonalLinearOperator(main, off, off)
        else:
            precision = _sym(state.precision + _mm(H.T, W))
        analysis = InformationState(eta_a, precision)
        u = _mm(W.T, innovation)  # H^T R^{-1} v
        quad = jnp.sum(whitened_v**2) - jnp.dot(
            u,
            lx.linear_solve(analysis.precision_operator, u, analysis._solver(), throw=False).value,
        )
        half_logdet = 0.5 * (logdet_R + analysis.logdet_precision() - state.logdet_precision())
        n_obs = jnp.sum(mask).astype(dtype)
        loglik = -0.5 * (n_obs * _LOG_2PI + 2.0 * half_logdet + quad)
        return analysis, loglik


def _tridiagonal_predict(
    state: InformationState, M: Array, offset: Array, process_noise: Any
) -> InformationState:
    if process_noise is not None:
        raise ValueError(
            "InformationFilter(structure='tridiagonal') cannot predict with process noise: "
            "(M Lambda^{-1} M^T + Q)^{-1} is dense. Use structure='dense' (or a model "
            "without process noise)."
        )
    d = jnp.diagonal(M)
    off_diagonal = M - jnp.diag(d)
    d = eqx.error_if(
        d,
        jnp.any(off_diagonal != 0),
        "InformationFilter(structure='tridiagonal'): the dynamics are not diagonal, so "
        "M^{-T} Lambda M^{-1} is not tridiagonal. Use structure='dense'.",
    )
    prec = state.precision
    main = prec.diagonal / d**2
    off = prec.lower_diagonal / (d[:-1] * d[1:])
    precision = lx.TridiagonalLinearOperator(main, off, off)
    eta = state.eta / d + precision.mv(offset)
    return InformationState(eta, precision)


def _check_information_state(state: Any) -> None:
    if not isinstance(state, InformationState):
        raise TypeError(
            "expected an InformationState (from InformationFilter.init / init_information); "
            f"got {type(state).__name__}."
        )
