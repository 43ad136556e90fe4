r"""`EnKFNormaliser`: the EnKF update as a (linear) conditional normalising layer.

For jointly Gaussian ``(x, y)`` the conditional normaliser is

$$z = C^{-1}\big((x - μ_x) - K (y - μ_y)\big),\qquad K = Σ_{xy} Σ_{yy}^{-1},\qquad
C C^\top = Σ_{xx} - K Σ_{yx},$$

and mapping a joint sample to the latent space and back at the observed ``y^*`` gives
``x + K(y^* - y)``: the perturbed-observation EnKF (the slides of
``conditional_normalization``; Spantini, Baptista & Marzouk 2022, §4). It is the first layer
of the conditional-flow filter; learned layers correct what it leaves non-Gaussian.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, ArrayLike, Float, Real

import filterax.primitives as fxp

from ._flows import AbstractConditionalBijection

__all__ = ["EnKFNormaliser", "enkf_normaliser"]

_HIGHEST = "highest"


class EnKFNormaliser(AbstractConditionalBijection):
    r"""The linear conditional normaliser ``z = C^{-1}((x - μ_x) - K(y - μ_y))``.

    ``forward(z, y) = μ_x + K(y - μ_y) + C z`` with ``log|det| = Σ log|C_ii|``; ``inverse`` the
    reverse. ``context(y) = (y - μ_y) / σ_y`` (`y_scale` ``σ_y``): the layers after it see a
    standardised conditioning variable. Build it from samples with `enkf_normaliser`.

    **Fields:** `mean_x` ``(N_x,)``, `mean_y` ``(N_y,)``, `gain` ``K`` ``(N_x, N_y)``, `chol`
    ``C`` ``(N_x, N_x)`` lower-triangular, `y_scale` ``(N_y,)`` positive.

    **Reference:** Spantini, Baptista & Marzouk (2022), "Coupling techniques for nonlinear
    ensemble filtering", *SIAM Review* 64(4) (the EnKF as a linear transport map); Evensen
    (1994), Burgers et al. (1998) (the perturbed-observation EnKF it reproduces).
    """

    mean_x: Float[Array, " N_x"]
    mean_y: Float[Array, " N_y"]
    gain: Float[Array, "N_x N_y"]
    chol: Float[Array, "N_x N_x"]
    y_scale: Float[Array, " N_y"]

    @classmethod
    def identity(cls, n_x: int, n_y: int, dtype: Any = None) -> EnKFNormaliser:
        """``μ = 0``, ``K = 0``, ``C = I``, ``σ_y = 1``: the identity layer (a placeholder of
        the right shapes)."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        return cls(
            mean_x=jnp.zeros((n_x,), dtype),
            mean_y=jnp.zeros((n_y,), dtype),
            gain=jnp.zeros((n_x, n_y), dtype),
            chol=jnp.eye(n_x, dtype=dtype),
            y_scale=jnp.ones((n_y,), dtype),
        )

    def _conditional_mean(self, y: Array) -> Array:
        return self.mean_x + jnp.matmul(self.gain, y - self.mean_y, precision=_HIGHEST)

    def _logdet(self) -> Array:
        return jnp.sum(jnp.log(jnp.abs(jnp.diagonal(self.chol))))

    def forward(
        self, z: Float[Array, " N_x"], y: Float[Array, " N_y"]
    ) -> tuple[Float[Array, " N_x"], Real[Array, ""]]:
        x = self._conditional_mean(y) + jnp.matmul(self.chol, z, precision=_HIGHEST)
        return x, self._logdet()

    def inverse(
        self, x: Float[Array, " N_x"], y: Float[Array, " N_y"]
    ) -> tuple[Float[Array, " N_x"], Real[Array, ""]]:
        z = jsl.solve_triangular(self.chol, x - self._conditional_mean(y), lower=True)
        return z, -self._logdet()

    def context(self, y: Float[Array, " N_y"]) -> Float[Array, " N_y"]:
        return (y - self.mean_y) / self.y_scale


def enkf_normaliser(
    x: Float[ArrayLike, "N N_x"],
    y: Float[ArrayLike, "N N_y"],
    obs_noise: Any = None,
    *,
    jitter: Real[ArrayLike, ""] = 1e-10,
) -> EnKFNormaliser:
    r"""The closed-form `EnKFNormaliser` of an ensemble, by sample (Bessel-corrected) moments.

    - ``obs_noise=None``: `y` are joint samples of the conditioning variable; ``Σ`` are the
      sample covariances of ``(x, y)``.
    - ``obs_noise=R``: `y` are the noise-free predictions ``h(x_i)`` and ``y = h(x) + ε``,
      ``ε ~ N(0, R)``: ``Σ_{yy} = C^{hh} + R``, ``Σ_{xy} = C^{xh}``, so ``K`` is the gain of the
      stochastic EnKF (`filterax.filters.StochasticEnKF`) and ``μ_y`` the mean of ``h(x_i)``.

    ``C`` is the Cholesky factor of ``Σ_{xx} - K Σ_{yx} + δ I`` with
    ``δ = jitter · tr(Σ_{xx})/N_x`` (keeps it invertible when the ensemble is rank-deficient;
    the EnKF analysis ``x + K(y^* - y)`` does not depend on ``C``). ``σ_y = sqrt(diag Σ_{yy})``
    (1 where it is 0).

    **Arguments:**

    - `x`: ``(N, N_x)`` samples of ``x``.
    - `y`: ``(N, N_y)`` samples of ``y`` (or of ``h(x)`` with `obs_noise`).
    - `obs_noise`: ``R`` in any form `filterax.primitives.as_noise_operator` takes, or ``None``.
    - `jitter`: the relative ridge ``δ`` above.

    **Returns:** an `EnKFNormaliser`.
    """
    fxp.check_ensemble(x, "enkf_normaliser(x=...)")
    x = jnp.asarray(x)
    y = jnp.asarray(y).astype(x.dtype)
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y must be a 2-D array (N, N_y) with one row per row of x ({x.shape[0]}); got "
            f"shape {y.shape}."
        )
    n, n_x = x.shape
    n_y = y.shape[1]
    mean_x, mean_y = jnp.mean(x, axis=0), jnp.mean(y, axis=0)
    ax = (x - mean_x[None, :]) / jnp.sqrt(n - 1.0)
    ay = (y - mean_y[None, :]) / jnp.sqrt(n - 1.0)
    sxx = jnp.matmul(ax.T, ax, precision=_HIGHEST)
    sxy = jnp.matmul(ax.T, ay, precision=_HIGHEST)
    syy = jnp.matmul(ay.T, ay, precision=_HIGHEST)
    if obs_noise is not None:
        syy = syy + fxp.as_noise_operator(obs_noise, n_y, dtype=x.dtype).as_matrix()
    syy = 0.5 * (syy + syy.T)
    if n_y > 0:
        chol_y = jnp.linalg.cholesky(syy)
        gain = jsl.cho_solve((chol_y, True), sxy.T).T
    else:
        gain = jnp.zeros((n_x, 0), x.dtype)
    cond = sxx - jnp.matmul(gain, sxy.T, precision=_HIGHEST)
    cond = 0.5 * (cond + cond.T)
    ridge = jnp.asarray(jitter, x.dtype) * jnp.trace(sxx) / n_x
    chol = jnp.linalg.cholesky(cond + ridge * jnp.eye(n_x, dtype=x.dtype))
    var_y = jnp.diagonal(syy)
    y_scale = jnp.where(var_y > 0, jnp.sqrt(jnp.where(var_y > 0, var_y, 1.0)), 1.0)
    return EnKFNormaliser(mean_x, mean_y, gain, chol, y_scale)
