"""Additive process noise around any deterministic dynamics."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, ScalarLike

from filterax.primitives import AbstractStochasticDynamics

from ._integrators import check_state

__all__ = ["StochasticDynamics"]


def _convert_noise(noise: Any) -> Any:
    if noise is None or isinstance(noise, lx.AbstractLinearOperator):
        return noise
    arr = jnp.asarray(noise)
    if not jnp.issubdtype(arr.dtype, jnp.inexact):
        arr = arr.astype(float)
    return arr


class StochasticDynamics(AbstractStochasticDynamics):
    r"""Deterministic dynamics plus additive Gaussian process noise, drawn once per call.

    $$x(t_1) = \mathcal M(x(t_0); t_0, t_1) + \xi,\qquad \xi \sim \mathcal N(0, Q).$$

    The noise is added once per call, i.e. once per observation window when a filter calls
    ``model(x, t_k, t_{k+1}, key=...)`` — the convention of Bach et al. (2025) (``Sigma =
    0.1 I`` per step for Lorenz-96, ``0.01 I`` per 5 steps for Kuramoto–Sivashinsky). With
    ``noise=None`` the covariance is the wrapped model's ``exact_noise_variance(t0, t1)``
    (`OrnsteinUhlenbeck`, `BrownianMotion`), which makes the transition exact for any
    interval.

    The same key gives the same draw; propagate an ensemble with
    ``jax.vmap(lambda x, k: model(x, t0, t1, key=k))(ensemble, jax.random.split(key, N_e))``.

    **Arguments:**

    - `dynamics`: ``dynamics(x, t0, t1) -> x`` on one state (any `AbstractDynamics`).
    - `noise`: the covariance ``Q``: a scalar variance ``c`` (``c I``, DAPPER's ``noise=c``),
      a 1-D array of variances, a 2-D positive-definite matrix, a lineax operator, or
      ``None`` for the exact SDE transition variance.

    **Reference:** DAPPER equivalent: ``Dyn = {"model": step, "noise": Q}`` in a
    ``HiddenMarkovModel``.

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        from filterax.zoo import Lorenz96, StochasticDynamics

        model = StochasticDynamics(Lorenz96(), noise=0.1)
        x1 = model(jnp.full(40, 8.0), 0.0, 0.05, key=jax.random.key(0))
        ```
    """

    dynamics: Any
    noise: lx.AbstractLinearOperator | Float[ArrayLike, "..."] | None = eqx.field(
        default=None, converter=_convert_noise
    )

    def __check_init__(self):
        if not callable(self.dynamics):
            raise TypeError(
                f"StochasticDynamics needs callable dynamics(x, t0, t1); got {self.dynamics!r}."
            )
        noise = self.noise
        if noise is None:
            if not callable(getattr(self.dynamics, "exact_noise_variance", None)):
                raise ValueError(
                    f"noise=None means 'use the exact SDE transition variance', but "
                    f"{type(self.dynamics).__name__} has no exact_noise_variance(t0, t1). "
                    "Pass the process-noise covariance explicitly, e.g. noise=0.1 for 0.1 I."
                )
            return
        if isinstance(noise, lx.AbstractLinearOperator):
            if noise.in_size() != noise.out_size():
                raise ValueError(
                    f"The process-noise operator must be square; got shape "
                    f"({noise.out_size()}, {noise.in_size()})."
                )
            return
        if noise.ndim > 2 or (noise.ndim == 2 and noise.shape[0] != noise.shape[1]):
            raise ValueError(
                f"noise must be a scalar variance, a 1-D array of variances or a square "
                f"covariance matrix; got an array of shape {noise.shape}."
            )
        if isinstance(noise, jax.core.Tracer):
            return
        values = np.asarray(noise)
        if noise.ndim < 2 and np.any(values < 0):
            raise ValueError(
                f"Process-noise variances must be >= 0; got {values}. Pass variances "
                "(squared standard deviations)."
            )
        if noise.ndim == 2:
            try:
                np.linalg.cholesky(values)
            except np.linalg.LinAlgError:
                raise ValueError(
                    "A dense process-noise covariance must be symmetric positive definite "
                    "(it is sampled through its Cholesky factor). Add a small jitter, or pass "
                    "a 1-D array of variances for a diagonal (possibly singular) covariance."
                ) from None

    def noise_covariance(
        self, x: Float[Array, " N_x"], t0: ScalarLike, t1: ScalarLike
    ) -> lx.AbstractLinearOperator:
        """The covariance ``Q`` of the noise added to state ``x`` over ``[t0, t1]``."""
        check_state(x, None, "StochasticDynamics")
        n, dtype = x.shape[0], x.dtype
        noise = self.noise
        if noise is None:
            var = jnp.asarray(self.dynamics.exact_noise_variance(t0, t1)).astype(dtype)
            return lx.DiagonalLinearOperator(jnp.broadcast_to(var, (n,)))
        if isinstance(noise, lx.AbstractLinearOperator):
            if noise.in_size() != n:
                raise ValueError(
                    f"The process-noise operator has size {noise.in_size()} but the state has "
                    f"length {n}."
                )
            return noise
        noise = noise.astype(dtype)
        if noise.ndim == 0:
            return lx.DiagonalLinearOperator(jnp.full((n,), noise))
        if noise.shape[0] != n:
            raise ValueError(
                f"noise describes a state of length {noise.shape[0]} but the state has length "
                f"{n}. Pass {n} variances, a scalar, or an ({n}, {n}) covariance."
            )
        if noise.ndim == 1:
            return lx.DiagonalLinearOperator(noise)
        return lx.MatrixLinearOperator(noise, lx.positive_semidefinite_tag)

    def sample_noise(
        self, key: PRNGKeyArray, x: Float[Array, " N_x"], t0: ScalarLike, t1: ScalarLike
    ) -> Float[Array, " N_x"]:
        """One draw ``xi ~ N(0, Q)`` shaped like ``x`` (same key, same draw)."""
        cov = self.noise_covariance(x, t0, t1)
        z = jax.random.normal(key, x.shape, x.dtype)
        if lx.is_diagonal(cov):
            return jnp.sqrt(lx.diagonal(cov).astype(x.dtype)) * z
        factor = jnp.linalg.cholesky(cov.as_matrix().astype(x.dtype))
        return jnp.matmul(factor, z, precision=jax.lax.Precision.HIGHEST)

    def __call__(
        self, x: Float[Array, " N_x"], t0: ScalarLike, t1: ScalarLike, *, key: PRNGKeyArray
    ) -> Float[Array, " N_x"]:
        """``dynamics(x, t0, t1)`` plus one draw of the process noise."""
        return self.dynamics(x, t0, t1) + self.sample_noise(key, x, t0, t1)
