"""ETKF followed by a random mean-preserving rotation (Livings, Dance & Nichols 2008)."""

from __future__ import annotations

from typing import Any

from jaxtyping import ArrayLike, Float, PRNGKeyArray

import filterax.primitives as fxp

from ._common import finish_transform_analysis, prepare_analysis, require_key
from ._etkf import etkf_weights_and_transform
from ._transforms import matmul, random_mean_preserving_rotation


class ETKF_Livings(fxp.AbstractSequentialFilter):
    r"""ETKF with a random, mean-preserving orthogonal rotation of the analysis anomalies.

    $$X'^a = \Theta\, T X', \qquad \Theta^\top\Theta = I, \quad \Theta\mathbf 1 = \mathbf 1,
    \quad \Theta = \tfrac1{N_e}\mathbf 1\mathbf 1^\top + \Omega Q \Omega^\top,$$

    with ``T`` the symmetric ETKF transform, ``Omega`` an orthonormal basis of ``1^\perp`` and
    ``Q`` Haar-distributed on ``O(N_e - 1)`` (drawn from `key`). The analysis mean and sample
    covariance are those of the ETKF (``Theta`` is orthogonal and keeps the anomalies centred:
    Livings et al. 2008 show a transform must have ``1`` as an eigenvector to stay unbiased),
    while the individual members differ. Rotating every cycle breaks the ETKF's tendency to
    collapse the ensemble onto a few members / preferred directions over long runs, which is
    what DAPPER's ``rot=True`` does.

    Gradients: ``Theta`` depends only on `key`, so differentiating through the analysis is
    as safe as for `ETKF`. Any ``R`` structure; NaN observations skipped exactly.

    **Arguments:** none. `analysis(key, forecast, obs, obs_op, obs_noise, **context)` needs a
    `key` (same key ⇒ identical ensemble); `context` is ignored.

    **Returns** (of `analysis`): `fxp.Analysis` with ``info`` a `TransformInfo` whose
    ``transform`` is ``Theta T``.

    **Reference:** Livings, Dance & Nichols (2008), *Physica D* 237, "Unbiased ensemble
    square root filters"; Sakov & Oke (2008b), *MWR* 136 (mean-preserving random rotations).
    DAPPER: ``EnKF("Sqrt", N, rot=True)`` — ``post_process`` applies
    ``genOG_1(N) @ A`` after the analysis.

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        import filterax.primitives as fxp
        from filterax.filters import ETKF_Livings

        X = jax.random.normal(jax.random.key(0), (10, 3))
        out = ETKF_Livings().analysis(jax.random.key(1), X, jnp.zeros(3), fxp.IdentityObs(), 2.0)
        ```
    """

    def analysis(
        self,
        key: PRNGKeyArray | None,
        forecast: Float[ArrayLike, "N_e N_x"],
        obs: Float[ArrayLike, " N_y"],
        obs_op: Any,
        obs_noise: Any,
        **context: Any,
    ) -> fxp.Analysis:
        """Assimilate `obs` into `forecast` and rotate (see the class docstring)."""
        del context
        key = require_key(key, "ETKF_Livings.analysis (random rotation)")
        inputs = prepare_analysis(forecast, obs, obs_op, obs_noise, name="ETKF_Livings.analysis")
        weights, transform = etkf_weights_and_transform(
            inputs.whitened_anomalies, inputs.whitened_innovation
        )
        rotation = random_mean_preserving_rotation(key, inputs.n_ensemble, inputs.dtype)
        return finish_transform_analysis(inputs, weights, matmul(rotation, transform))
