r"""Ensemble-space linear algebra shared by the sequential smoothers.

`ensemble_transform`: the right-acting ``N_e x N_e`` matrix ``W`` of one filter analysis,
``X^a = W X^f``, extracted *exactly* by running the filter's own ``analysis`` on the augmented
forecast ``[X^f, I_{N_e}]`` (the identity columns are carried along like extra state components
that are never observed, so the analysis of the augmented ensemble is ``[W X^f, W]``).

The matrix functions the smoothers use (pseudo-inverse and square root of PSD Gram matrices,
with derivatives finite at repeated eigenvalues) and the full-precision `matmul` live in
`filterax.primitives` (`pinv_psd`, `sqrt_psd`, `default_pinv_rcond`, `matmul`, `apply_obs`);
the old names `psd_pinv`, `psd_sqrt`, `default_rcond` below are those same functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from filterax.primitives import (
    apply_obs,
    default_pinv_rcond as default_rcond,
    matmul,
    pinv_psd as psd_pinv,
    sqrt_psd as psd_sqrt,
)

__all__ = [
    "apply_obs",
    "default_rcond",
    "ensemble_transform",
    "matmul",
    "psd_pinv",
    "psd_sqrt",
]


class _LeadingObs(eqx.Module):
    """Observe only the first ``n_x`` entries of an augmented state ``[x, w]``."""

    obs_op: Any
    n_x: int = eqx.field(static=True)

    def __call__(self, z: Array) -> Array:
        return apply_obs(self.obs_op, z[: self.n_x])


def ensemble_transform(
    filt: Any,
    key: PRNGKeyArray | None,
    forecast: Float[Array, "N_e N_x"],
    obs: Float[Array, " N_y"],
    obs_op: Any,
    obs_noise: Any,
    context: Mapping[str, Any] | None = None,
) -> Float[Array, "N_e N_e"]:
    r"""The ``N_e x N_e`` matrix ``W`` with ``filt.analysis(key, X^f, ...).particles = W X^f``.

    Every global ensemble Kalman analysis (ETKF, EnSRF, EnSRF_Serial, DEnKF, ESTKF,
    ETKF_Livings, EnKF_N, StochasticEnKF, `KalmanFilter.analysis`) is *linear in ensemble
    space*: the analysis is ``W X^f`` with ``W`` depending only on ``H(X^f)``, ``y``, ``R``
    and the key (Evensen & van Leeuwen 2000; Sakov & Oke 2008 for the DEnKF). Running the
    same analysis with the same key on the augmented ensemble

    $$\tilde X^f = [X^f,\ I_{N_e}] \in \mathbb R^{N_e \times (N_x + N_e)},$$

    with an observation operator that only looks at the first ``N_x`` columns (so
    ``H(\tilde X^f) = H(X^f)``), returns ``[W X^f, W I]``: the last ``N_e`` columns are
    ``W``, exactly (to round-off) and including any random draws of the filter (perturbed
    observations, random rotations), which depend only on the key and ``N_e, N_y``.

    **Arguments:**

    - `filt`: a global ensemble filter (localised filters have no single ``W``).
    - `key`: the analysis key the filter used (`cycle_keys` ``(key, k)[1]`` in `assimilate`).
    - `forecast`, `obs`, `obs_op`, `obs_noise`: as for ``filt.analysis``.
    - `context`: extra keyword arguments for ``filt.analysis``.

    **Returns:** ``W``, ``(N_e, N_e)``; ``W 1 = 1`` for mean-preserving filters.
    """
    n_e, n_x = forecast.shape
    identity = jnp.eye(n_e, dtype=forecast.dtype)
    augmented = jnp.concatenate([forecast, identity], axis=1)
    result = filt.analysis(
        key, augmented, obs, _LeadingObs(obs_op, n_x), obs_noise, **dict(context or {})
    )
    particles = jnp.asarray(result.particles)
    if particles.shape != augmented.shape:
        raise ValueError(
            f"{type(filt).__name__}.analysis returned particles of shape {particles.shape} for "
            f"a forecast of shape {augmented.shape}; the smoothers need an analysis that "
            "returns one updated member per forecast member."
        )
    return particles[:, n_x:].astype(forecast.dtype)
