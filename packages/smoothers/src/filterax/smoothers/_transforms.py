r"""Ensemble-space linear algebra shared by the sequential smoothers.

`ensemble_transform`: the right-acting ``N_e x N_e`` matrix ``W`` of one filter analysis,
``X^a = W X^f``, extracted *exactly* by running the filter's own ``analysis`` on the augmented
forecast ``[X^f, I_{N_e}]`` (the identity columns are carried along like extra state components
that are never observed, so the analysis of the augmented ensemble is ``[W X^f, W]``).

`local_ensemble_transforms`: the same for a localised filter (`LETKF`), whose analysis of
grid point ``i`` is its own ``X^a_{:, i} = W^{(i)} X^f_{:, i}``: one identity block per grid
point, placed at that point's coordinates, returns every ``W^{(i)}``.

The matrix functions the smoothers use (pseudo-inverse and square root of PSD Gram matrices,
with derivatives finite at repeated eigenvalues) and the full-precision `matmul` live in
`filterax.primitives` (`pinv_psd`, `sqrt_psd`, `default_pinv_rcond`, `matmul`, `apply_obs`);
the old names `psd_pinv`, `psd_sqrt`, `default_rcond` below are those same functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

import filterax.primitives as fxp
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
    "local_ensemble_transforms",
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


def _check_transform_inputs(
    filt: Any, forecast: Any, obs: Any, obs_noise: Any, where: str
) -> tuple[Array, bool]:
    """The checks of the public transforms before they call ``filt.analysis``: a filter with
    an analysis, a 2-D forecast, and a concrete obs_noise finite and positive definite.
    Returns the forecast as an array and whether any input is traced (then `_checked`)."""
    if not callable(getattr(filt, "analysis", None)):
        raise TypeError(
            f"{where}: filt must be a sequential filter with an analysis(key, forecast, obs, "
            f"obs_op, obs_noise, **context) method; got {type(filt).__name__}."
        )
    forecast = jnp.asarray(forecast)
    if forecast.ndim != 2:
        raise ValueError(
            f"{where}: forecast must be a 2-D array (N_e, N_x) with members on the first axis; "
            f"got shape {forecast.shape}."
        )
    if jnp.ndim(obs) == 1:
        fxp.positive_definite_noise(obs_noise, jnp.shape(obs)[0], name=f"{where}: obs_noise")
    traced = any(
        isinstance(leaf, jax.core.Tracer)
        for leaf in jax.tree_util.tree_leaves((forecast, obs, obs_noise))
    )
    return forecast, traced


def _checked(w: Array, forecast: Array, obs: Array, obs_noise: Any, where: str) -> Array:
    """`w` with the run-time check of traced inputs (under jit/vmap/grad) that no eager check
    sees: a NaN/inf forecast or an obs_noise that is not finite positive definite raise when
    the program runs instead of returning NaN (or, for an infinite variance, the identity)."""
    finite = jnp.all(jnp.isfinite(forecast))
    noise_ok = fxp.valid_noise(obs_noise, jnp.shape(obs)[0])
    return eqx.branched_error_if(
        w,
        ~(finite & noise_ok),
        jnp.where(finite, 0, 1),
        (
            f"{where}: obs_noise must be finite and positive definite; a traced value (under "
            "jit/vmap/grad) was not.",
            f"{where}: the forecast ensemble has a NaN/inf entry (a traced value, under "
            "jit/vmap/grad).",
        ),
    )


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

    Bad inputs are refused: a concrete NaN/inf forecast or an `obs_noise` that is not finite
    and positive definite with a `ValueError`; traced ones (under `jit`/`vmap`/`grad`) with an
    `eqx.error_if` error when the program runs (never a NaN or identity transform).

    **Arguments:**

    - `filt`: a global ensemble filter (localised filters have no single ``W``: use
      `local_ensemble_transforms`).
    - `key`: the analysis key the filter used (`cycle_keys` ``(key, k)[1]`` in `assimilate`).
    - `forecast`, `obs`, `obs_op`, `obs_noise`: as for ``filt.analysis``.
    - `context`: extra keyword arguments for ``filt.analysis``.

    **Returns:** ``W``, ``(N_e, N_e)``; ``W 1 = 1`` for mean-preserving filters.
    """
    where = "ensemble_transform"
    forecast, traced = _check_transform_inputs(filt, forecast, obs, obs_noise, where)
    if isinstance(filt, fxp.AbstractLocalFilter):
        raise ValueError(
            f"{where}: {type(filt).__name__} is a localised filter, with one transform per "
            "grid point and no single W: use local_ensemble_transforms(filt, key, forecast, "
            "obs, obs_op, obs_noise, context)."
        )
    w = replay_transform(filt, key, forecast, obs, obs_op, obs_noise, context)
    return _checked(w, forecast, obs, obs_noise, where) if traced else w


def replay_transform(
    filt: Any,
    key: PRNGKeyArray | None,
    forecast: Float[Array, "N_e N_x"],
    obs: Float[Array, " N_y"],
    obs_op: Any,
    obs_noise: Any,
    context: Mapping[str, Any] | None = None,
) -> Float[Array, "N_e N_e"]:
    """`ensemble_transform` without its input checks, for the smoothers' replays (their
    inputs are checked once per call, and traced bad noise becomes a status there)."""
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


def _rows_per_point(value: Any, n_x: int, n_e: int, name: str) -> Array:
    """``value`` (one row per grid point) followed by each row repeated ``n_e`` times."""
    value = jnp.asarray(value)
    if value.ndim == 1:
        value = value[:, None]
    if value.ndim != 2 or value.shape[0] != n_x:
        raise ValueError(
            f"the `{name}` context must have one row per state component, shape ({n_x}, D) "
            f"(or ({n_x},)); got shape {value.shape}."
        )
    return jnp.concatenate([value, jnp.repeat(value, n_e, axis=0)], axis=0)


def local_ensemble_transforms(
    filt: Any,
    key: PRNGKeyArray | None,
    forecast: Float[Array, "N_e N_x"],
    obs: Float[Array, " N_y"],
    obs_op: Any,
    obs_noise: Any,
    context: Mapping[str, Any],
) -> Float[Array, "N_x N_e N_e"]:
    r"""The ``N_x`` per-grid-point matrices ``W^{(i)}`` of one localised analysis.

    A localised filter (`filterax.filters.LETKF`, any `filterax.primitives.
    AbstractLocalFilter`) analyses each state component ``i`` on its own, from the
    observations near its coordinates: ``X^a_{:, i} = W^{(i)} X^f_{:, i}`` with an
    ``N_e x N_e`` matrix that depends on ``H(X^f)``, ``y``, ``R``, the key and the
    coordinates of ``i`` only (for the LETKF, ``W^{(i)} = 1 \bar w^\top + (w^{(i)} 1^\top /
    \sqrt{N_e - 1} + T^{(i)}) (I - 1 1^\top / N_e)``, Hunt et al. 2007). Running the same
    analysis with the same key on the augmented ensemble

    $$\tilde X^f = [X^f,\ I_{N_e},\ I_{N_e},\ \dots,\ I_{N_e}]
    \in \mathbb R^{N_e \times N_x (N_e + 1)},$$

    whose ``i``-th identity block sits at the coordinates of grid point ``i`` (the context's
    ``state_coords`` and, if given, the rows of ``local_obs_indices`` are repeated), with an
    observation operator that looks at the first ``N_x`` columns only, returns ``W^{(i)}`` in
    block ``i``, exactly (to round-off). Cost: one analysis of ``N_x (N_e + 1)`` components.

    Bad inputs are refused as in `ensemble_transform`: concrete ones with a `ValueError`,
    traced ones (under `jit`/`vmap`/`grad`) with an `eqx.error_if` error.

    **Arguments:**

    - `filt`: the localised filter; `key`, `forecast`, `obs`, `obs_op`, `obs_noise`: as for
      ``filt.analysis``.
    - `context`: the keyword context of ``filt.analysis``; must hold ``state_coords``.

    **Returns:** ``(N_x, N_e, N_e)``, entry ``i`` the transform of grid point ``i``.

    **Reference:** L. Nerger, S. Schulte & A. Bunse-Gerstner (2014), "On the influence of
    model nonlinearity and localization on ensemble Kalman smoothing", *QJRMS* 140 (the
    local EnKS applies the filter's local weights to the past states at the same grid point);
    S.-C. Yang, E. Kalnay & B. Hunt (2012), *MWR* 140 (the LETKF "no-cost smoother").
    """
    where = "local_ensemble_transforms"
    forecast, traced = _check_transform_inputs(filt, forecast, obs, obs_noise, where)
    w = replay_local_transforms(filt, key, forecast, obs, obs_op, obs_noise, context)
    return _checked(w, forecast, obs, obs_noise, where) if traced else w


def replay_local_transforms(
    filt: Any,
    key: PRNGKeyArray | None,
    forecast: Float[Array, "N_e N_x"],
    obs: Float[Array, " N_y"],
    obs_op: Any,
    obs_noise: Any,
    context: Mapping[str, Any],
) -> Float[Array, "N_x N_e N_e"]:
    """`local_ensemble_transforms` without its input checks, for the smoothers' replays."""
    n_e, n_x = forecast.shape
    context = dict(context)
    if context.get("state_coords") is None:
        raise ValueError(
            f"{type(filt).__name__} is a localised filter: smoothing its run replays its local "
            "analyses and needs the geometry. Pass context= the context given to assimilate "
            "(state_coords=..., obs_coords=..., and distance=... if used)."
        )
    context["state_coords"] = _rows_per_point(context["state_coords"], n_x, n_e, "state_coords")
    if context.get("local_obs_indices") is not None:
        context["local_obs_indices"] = _rows_per_point(
            context["local_obs_indices"], n_x, n_e, "local_obs_indices"
        )
    identity = jnp.eye(n_e, dtype=forecast.dtype)
    augmented = jnp.concatenate([forecast, jnp.tile(identity, (1, n_x))], axis=1)
    result = filt.analysis(key, augmented, obs, _LeadingObs(obs_op, n_x), obs_noise, **context)
    particles = jnp.asarray(result.particles)
    if particles.shape != augmented.shape:
        raise ValueError(
            f"{type(filt).__name__}.analysis returned particles of shape {particles.shape} for "
            f"a forecast of shape {augmented.shape}; the smoothers need an analysis that "
            "returns one updated member per forecast member."
        )
    blocks = particles[:, n_x:].astype(forecast.dtype).reshape(n_e, n_x, n_e)
    # blocks[a, i, b] = (W^(i) e_b)_a = W^(i)[a, b]
    return jnp.transpose(blocks, (1, 0, 2))
