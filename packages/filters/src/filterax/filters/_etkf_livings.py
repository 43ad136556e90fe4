"""ETKF followed by a random mean-preserving rotation (Livings, Dance & Nichols 2008)."""

from __future__ import annotations

from typing import Any

from jaxtyping import Array, Float, PRNGKeyArray

import filterax.primitives as fxp

from ._common import AnalysisInputs, require_key
from ._etkf import etkf_weights_and_transform
from ._transform_filter import AbstractTransformFilter
from ._transforms import matmul


class ETKF_Livings(AbstractTransformFilter):
    r"""ETKF with a random, mean-preserving orthogonal rotation of the analysis anomalies.

    $$X'^a = \Theta\, T X', \qquad \Theta^\top\Theta = I, \quad \Theta\mathbf 1 = \mathbf 1,
    \quad \Theta = \tfrac1{N_e}\mathbf 1\mathbf 1^\top + V Q V^\top,$$

    with ``T`` the symmetric ETKF transform, ``V`` an orthonormal basis of ``1^\perp`` and
    ``Q`` Haar-distributed on ``O(N_e - 1)`` (drawn from `key`): `fxp.random_rotation`, the
    same rotation as ``assimilate(..., rotate=True)``. The analysis mean and sample
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

    def weights_and_transform(
        self, inputs: AnalysisInputs, key: PRNGKeyArray | None
    ) -> tuple[Float[Array, " N_e"], Float[Array, "N_e N_e"], dict[str, Any]]:
        """The ETKF ``(w, T)`` with ``T`` rotated by `fxp.random_rotation` drawn from `key`."""
        key = require_key(key, "ETKF_Livings.analysis (random rotation)")
        weights, transform = etkf_weights_and_transform(
            inputs.whitened_anomalies, inputs.whitened_innovation
        )
        rotation = fxp.random_rotation(key, inputs.n_ensemble, inputs.dtype)
        return weights, matmul(rotation, transform), {}
