"""Failed forward evaluations: detection and the EnsembleKalmanProcesses.jl handlers.

A member fails when any entry of its forward evaluation is non-finite (NaN or inf: a crashed
or diverged simulation; the driver also writes NaN rows for members whose call raised). Shapes
never change, so everything is a mask: failed members are left out of every ensemble statistic
and then either re-sampled from a Gaussian fitted to the updated successful members
(``"sample_succ_gauss"``, EKP's ``SampleSuccGauss``) or left where they were (``"ignore"``: their
update is skipped). Up to half the members may fail; the driver raises beyond that.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

__all__ = ["FailureHandler", "failed_members", "n_failed", "resample_failed"]

FailureHandler: TypeAlias = Literal["sample_succ_gauss", "ignore"]
"""How a process treats failed members: ``"sample_succ_gauss"`` or ``"ignore"``."""

FAILURE_HANDLERS = ("sample_succ_gauss", "ignore")


def check_failure_handler(handler: str, owner: str) -> None:
    if handler not in FAILURE_HANDLERS:
        raise ValueError(
            f"{owner}(failure_handler=...) must be 'sample_succ_gauss' (re-sample failed "
            f"members from a Gaussian fitted to the successful ones) or 'ignore' (skip their "
            f"update); got {handler!r}."
        )


def failed_members(forward_evals: Float[ArrayLike, "N_e N_y"]) -> Bool[Array, " N_e"]:
    """Which members failed: any non-finite entry in their forward evaluation.

    **Arguments:**

    - `forward_evals`: the ``(N_e, N_y)`` forward-model outputs.

    **Returns:** a boolean ``(N_e,)`` mask, True where the member failed.

    **Reference:** EnsembleKalmanProcesses.jl: ``split_indices_by_success`` (there with a
    tolerance on the fraction of NaN entries; here any non-finite entry is a failure).

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.processes import failed_members

        failed_members(jnp.array([[1.0, 2.0], [jnp.nan, 0.0]]))  # [False, True]
        ```
    """
    g = jnp.asarray(forward_evals)
    if g.ndim != 2:
        raise ValueError(
            f"forward_evals must be a 2-D (N_e, N_y) array; got shape {g.shape}. Stack the "
            "members' outputs along axis 0."
        )
    return ~jnp.all(jnp.isfinite(g), axis=1)


def n_failed(forward_evals: Float[ArrayLike, "N_e N_y"]) -> Int[Array, ""]:
    """The number of failed members (see `failed_members`).

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.processes import n_failed

        n_failed(jnp.array([[1.0], [jnp.inf], [jnp.nan]]))  # 2
        ```
    """
    return jnp.sum(failed_members(forward_evals)).astype(jnp.int32)


def masked_stats(
    x: Float[Array, "N_e n"], ok: Bool[Array, " N_e"]
) -> tuple[Float[Array, " n"], Float[Array, "N_e n"], Array]:
    """Mean over the ``ok`` rows, anomalies (zero on the other rows) and the count of ``ok``.

    Rows that are not ``ok`` may hold NaN: they are replaced before any arithmetic, so nothing
    non-finite reaches the result (NaN * 0 would still be NaN).
    """
    clean = jnp.where(ok[:, None], x, 0.0)
    count = jnp.sum(ok.astype(x.dtype))
    mean = jnp.sum(clean, axis=0) / jnp.maximum(count, 1.0)
    anomalies = jnp.where(ok[:, None], clean - mean[None, :], 0.0)
    return mean, anomalies, count


def resample_failed(
    key: PRNGKeyArray,
    ensemble: Float[ArrayLike, "N_e N_p"],
    failed: Bool[ArrayLike, " N_e"],
) -> Float[Array, "N_e N_p"]:
    r"""Replace the failed members by draws from a Gaussian fitted to the successful ones.

    $$\theta_f \sim \mathcal N(\bar\theta_s, C_s),$$

    with the Bessel-corrected mean and covariance of the successful members, drawn through the
    QR factor of their anomalies (``C_s = R^T R / (n_s - 1)``), so a rank-deficient ``C_s``
    (fewer members than parameters) is fine.
    Successful members are returned unchanged.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `ensemble`: the ``(N_e, N_p)`` ensemble (failed rows may hold anything, even NaN).
    - `failed`: boolean ``(N_e,)`` mask of failed members (at least 2 must succeed).

    **Returns:** the ensemble with the failed rows re-sampled.

    **Reference:** EnsembleKalmanProcesses.jl: ``sample_empirical_gaussian`` inside the
    ``SampleSuccGauss`` failure handler; Lopez-Gomez et al. (2022), "Training physics-based
    machine-learning parameterizations with gradient-free ensemble Kalman methods", *JAMES*.

    !!! Example

        ```python
        import jax
        import jax.numpy as jnp
        from filterax.processes import resample_failed

        X = jax.random.normal(jax.random.key(0), (10, 3))
        failed = jnp.arange(10) < 2
        X = resample_failed(jax.random.key(1), X.at[:2].set(jnp.nan), failed)
        ```
    """
    x = jnp.asarray(ensemble)
    failed = jnp.asarray(failed, dtype=bool)
    if x.ndim != 2 or failed.shape != (x.shape[0],):
        raise ValueError(
            f"resample_failed needs an (N_e, N_p) ensemble and an (N_e,) mask; got shapes "
            f"{x.shape} and {failed.shape}."
        )
    ok = ~failed
    mean, anomalies, count = masked_stats(x, ok)
    draws = mean[None, :] + gaussian_from_anomalies(key, anomalies, x.shape[0]) / jnp.sqrt(
        jnp.maximum(count - 1.0, 1.0)
    )
    return jnp.where(failed[:, None], draws, x)


def gaussian_from_anomalies(key: PRNGKeyArray, anomalies: Array, n: int) -> Array:
    """``n`` draws from ``N(0, A^T A)`` for anomalies ``A`` of shape ``(N_e, N_p)``.

    ``A = Q R`` (reduced QR) gives ``A^T A = R^T R``, so ``z R`` with ``z ~ N(0, I_r)``,
    ``r = min(N_e, N_p)``, has the right law: ``O(N_e N_p r)``, no ``N_e x N_e`` draws, and a
    rank-deficient ``A`` is fine.
    """
    _, r = jnp.linalg.qr(anomalies, mode="reduced")
    z = jax.random.normal(key, (n, r.shape[0]), dtype=anomalies.dtype)
    return jnp.matmul(z, r, precision=lax.Precision.HIGHEST)


def handle_failures(
    handler: str,
    key: PRNGKeyArray,
    previous: Float[Array, "N_e N_p"],
    updated: Float[Array, "N_e N_p"],
    failed: Bool[Array, " N_e"],
) -> Float[Array, "N_e N_p"]:
    """Apply a failure handler after an update computed from the successful members."""
    if handler == "ignore":
        return jnp.where(failed[:, None], previous, updated)
    return resample_failed(key, updated, failed)
