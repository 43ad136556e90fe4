r"""``log N(y; h, R)`` of one observation vector, with missing entries, by whitening.

The one place where the Gaussian observation density of a cycle is evaluated for a given
prediction ``h`` (a particle's ``h(x_i)``, a Gaussian's ``H m``, a Monte Carlo sample's
``h(m + L eps)``): particle weights, variational costs and ELBOs all build a
`GaussianObsLikelihood` once per cycle and evaluate it many times.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Real

from ._linalg import matmul
from ._missing import fill_missing, mask_noise, observation_mask
from ._noise import as_noise_operator
from ._validation import check_vector
from ._whitening import Whitening, noise_whitening

__all__ = ["GaussianObsLikelihood"]

_LOG_2PI = math.log(2.0 * math.pi)


class GaussianObsLikelihood(eqx.Module):
    r"""The Gaussian observation density of one observation vector, NaN entries missing.

    $$\log\mathcal N(y; h, R) = -\tfrac12\big(p\log 2\pi + \log|R_o| + \lVert G(y - h)\rVert^2
    \big),\qquad G^\top G = R_o^{-1},$$

    over the ``p`` observed entries ``o`` of ``y`` (NaN entries are missing: they add nothing,
    and shapes never change, so the same compiled program serves every mask). ``R_o`` is ``R``
    with the missing rows and columns replaced by the identity's (`mask_noise`), whitened by
    `noise_whitening` (diagonal, dense or low-rank ``R`` without densifying); no inverse.

    Build it with `GaussianObsLikelihood.build` once per cycle, then evaluate it for as many
    predictions as needed.

    **Fields:**

    - `obs`: ``(N_y,)`` the observation with missing entries set to 0.
    - `mask`: ``(N_y,)`` ``True`` where observed.
    - `whitening`: the `Whitening` of the masked ``R``.
    - `n_obs`: the number ``p`` of observed entries (a float scalar).

    **Reference:** the Gaussian log-density; missing data as in DAPPER/DART (left out of the
    likelihood).

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import GaussianObsLikelihood

        lik = GaussianObsLikelihood.build(jnp.array([1.0, jnp.nan]), 0.5)
        lik.log_density(jnp.zeros(2))          # log N(1; 0, 0.5): the NaN entry is left out
        lik.log_density_rows(jnp.zeros((4, 2)))  # one value per particle
        ```
    """

    obs: Float[Array, " N_y"]
    mask: Bool[Array, " N_y"]
    whitening: Whitening
    n_obs: Real[Array, ""]

    @classmethod
    def build(
        cls, obs: Float[ArrayLike, " N_y"], obs_noise: Any, dtype: Any = None
    ) -> GaussianObsLikelihood:
        """The likelihood of `obs` (NaN where missing) with noise covariance `obs_noise` (any
        form `as_noise_operator` accepts), in `dtype` (default: the observation's float
        dtype)."""
        check_vector(obs, "obs (the observation vector of the cycle; NaN where missing)")
        obs = jnp.asarray(obs)
        if dtype is None:
            dtype = obs.dtype if jnp.issubdtype(obs.dtype, jnp.floating) else float
        obs = obs.astype(dtype)
        mask = observation_mask(obs)
        noise = mask_noise(as_noise_operator(obs_noise, obs.shape[0]), mask)
        return cls(
            fill_missing(obs, mask),
            mask,
            noise_whitening(noise, dtype),
            jnp.sum(mask).astype(dtype),
        )

    def constant(self) -> Real[Array, ""]:
        """``-½ (p log 2π + log|R_o|)``: the log-density at a zero residual."""
        return -0.5 * (self.n_obs * _LOG_2PI + self.whitening.logdet())

    def whitened_residuals(
        self, predicted: Float[Array, "*batch N_y"]
    ) -> Float[Array, "*batch N_y"]:
        """``G (y - h)`` for each row of `predicted` (missing entries 0)."""
        if predicted.shape[-1:] != self.obs.shape:
            raise ValueError(
                f"the prediction has {predicted.shape[-1]} entries per row but the observation "
                f"has {self.obs.shape[0]}: pass h(x) of this observation vector."
            )
        zero = jnp.zeros((), predicted.dtype)
        obs = jnp.broadcast_to(self.obs, predicted.shape)
        mask = jnp.broadcast_to(self.mask, predicted.shape)
        residual = jnp.where(mask, obs - predicted, zero)
        return self.whitening.whiten(residual)

    def log_density(self, predicted: Float[Array, " N_y"]) -> Real[Array, ""]:
        """``log N(y; h, R)`` over the observed entries for one prediction ``h``."""
        white = self.whitened_residuals(predicted)
        return self.constant() - 0.5 * jnp.sum(white * white)

    def log_density_rows(self, predicted: Float[Array, "M N_y"]) -> Float[Array, " M"]:
        """``log N(y; h_m, R)`` for each row ``h_m`` of `predicted` (particles, samples)."""
        white = self.whitened_residuals(predicted)
        return self.constant() - 0.5 * jnp.sum(white * white, axis=-1)

    def whitened_rows(self, matrix: Float[Array, "N_y K"]) -> Float[Array, "N_y K"]:
        """``G M`` with the missing rows of ``M`` zeroed (e.g. ``M = H L`` for trace terms)."""
        masked = jnp.where(self.mask[:, None], matrix, jnp.zeros((), matrix.dtype))
        return self.whitening.whiten(masked.T).T

    def expected_log_density(
        self,
        predicted: Float[Array, " N_y"],
        matrix: Float[Array, "N_y N_x"],
        chol: Float[Array, "N_x N_x"],
    ) -> Real[Array, ""]:
        r"""``E_{v ~ N(m, LL^T)} log N(y; Hv, R)`` for a linear observation, given ``Hm``:

        $$\log\mathcal N(y; Hm, R) - \tfrac12\lVert G H L\rVert_F^2 ,$$

        the second term being ``-½ tr(R⁻¹ H C Hᵀ)`` over the observed rows.
        """
        ghl = self.whitened_rows(matmul(matrix, chol))
        return self.log_density(predicted) - 0.5 * jnp.sum(ghl * ghl)
