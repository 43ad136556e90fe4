r"""Ensemble-transform filters: one `analysis`, written once, for the whole family.

Every global deterministic ensemble Kalman filter (ETKF, EnSRF, EnSRF_Serial, DEnKF, ESTKF,
ETKF_Livings, EnKF_N) updates the forecast in ensemble space:

$$X^a = \mathbf 1\big(\bar x + X'^\top w / \sqrt{N_e - 1}\big)^\top + T X',$$

and differs only in how it computes the mean weights ``w`` and the anomaly transform ``T`` from
the prepared inputs (`prepare_analysis`: whitened anomalies ``S``, whitened innovation
``delta``, noise, mask). `AbstractTransformFilter.analysis` is

    prepare_analysis -> weights_and_transform -> finish_transform_analysis

and a filter implements `AbstractTransformFilter.weights_and_transform` only.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

import filterax.primitives as fxp

from ._common import AnalysisInputs, prepare_analysis, require_no_context
from ._transforms import TransformInfo, apply_transform, full_transform

__all__ = ["AbstractTransformFilter", "finish_transform_analysis"]


def finish_transform_analysis(
    inputs: AnalysisInputs,
    weights: Float[Array, " N_e"],
    transform: Float[Array, "N_e N_e"],
    info_type: type = TransformInfo,
    **extra_info: Any,
) -> fxp.Analysis:
    r"""Build the `fxp.Analysis` of an ensemble-transform filter from ``(w, T)``.

    $$X^a = \mathbf 1(\bar x + X'^\top w/\sqrt{N_e-1})^\top + T X',$$

    with ``info = info_type(weights, transform, ensemble_transform, innovation, n_obs,
    **extra_info)``: by default a `TransformInfo` (the weights, the transform, the full
    ensemble transform ``E`` with ``X^a = E X^f``, the innovation and the observed count).

    **Arguments:**

    - `inputs`: the `AnalysisInputs` of `prepare_analysis`.
    - `weights`: ``w``, ``(N_e,)``; `transform`: ``T``, ``(N_e, N_e)``.
    - `info_type`: the info class (default `TransformInfo`; `EnKFNInfo` adds the inflation).
    - `extra_info`: further fields of `info_type`.

    **Returns:** `fxp.Analysis(particles, inputs.log_likelihood, info)`.

    **Reference:** DAPPER ``EnKF_analysis``: ``E = mu + w @ A + T @ A``.

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        import filterax.primitives as fxp
        from filterax.filters import finish_transform_analysis, prepare_analysis

        X = jax.random.normal(jax.random.key(0), (5, 3))
        inputs = prepare_analysis(X, jnp.zeros(3), fxp.IdentityObs(), 1.0)
        out = finish_transform_analysis(inputs, jnp.zeros(5), jnp.eye(5))  # no update
        ```
    """
    particles = apply_transform(inputs.forecast_mean, inputs.anomalies, weights, transform)
    info = info_type(
        weights=weights,
        transform=transform,
        ensemble_transform=full_transform(weights, transform),
        innovation=inputs.innovation,
        n_obs=inputs.n_obs,
        **extra_info,
    )
    return fxp.Analysis(particles, inputs.log_likelihood, info)


class AbstractTransformFilter(fxp.AbstractSequentialFilter):
    r"""A global ensemble filter whose analysis is an ensemble transform ``(w, T)``.

    $$X^a = \mathbf 1\big(\bar x + X'^\top w / \sqrt{N_e - 1}\big)^\top + T X'.$$

    Subclasses implement `weights_and_transform`; `analysis` (the same for all) validates and
    prepares the inputs (`prepare_analysis`: any observation operator form `fxp.apply_obs`
    accepts, any registered noise structure, NaN observations skipped exactly), calls it, and
    assembles the ensemble and a `TransformInfo` (or `info_type`, a class variable) with
    `finish_transform_analysis`.

    **Reference:** Tippett, Anderson, Bishop, Hamill & Whitaker (2003), *MWR* 131 (the common
    square-root form); Nerger et al. (2012), *MWR* 140 (a unification of square-root filters).
    DAPPER: ``EnKF_analysis`` (one function, ``upd_a`` selects the transform).

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.filters import AbstractTransformFilter

        class NoUpdate(AbstractTransformFilter):
            def weights_and_transform(self, inputs, key):
                n_e = inputs.n_ensemble
                return jnp.zeros(n_e), jnp.eye(n_e), {}
        ```
    """

    info_type: ClassVar[type] = TransformInfo

    @abc.abstractmethod
    def weights_and_transform(
        self, inputs: AnalysisInputs, key: PRNGKeyArray | None
    ) -> tuple[Float[Array, " N_e"], Float[Array, "N_e N_e"], dict[str, Any]]:
        """The mean weights ``w``, the anomaly transform ``T`` and extra `info_type` fields.

        **Arguments:** `inputs` (`AnalysisInputs`), `key` (the analysis key, may be ``None``
        for deterministic filters).

        **Returns:** ``(w, T, extra_info)``, ``extra_info`` a dict (empty for `TransformInfo`).
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
        """Assimilate `obs` into `forecast`: `prepare_analysis`, `weights_and_transform`, done.

        **Arguments:** `key` (used only by stochastic transforms, may be ``None`` otherwise),
        `forecast` ``(N_e, N_x)``, `obs` ``(N_y,)`` (NaN where missing), `obs_op` (callable,
        lineax operator or matrix), `obs_noise` (any `fxp.NoiseLike`); `context` must be empty
        (a global filter takes no coordinates or localizer: refused, never ignored).

        **Returns:** `fxp.Analysis(particles, log_likelihood, info)`.
        """
        name = f"{type(self).__name__}.analysis"
        require_no_context(context, name)
        inputs = prepare_analysis(forecast, obs, obs_op, obs_noise, name=name)
        weights, transform, extra_info = self.weights_and_transform(inputs, key)
        return finish_transform_analysis(
            inputs, weights, transform, type(self).info_type, **extra_info
        )
