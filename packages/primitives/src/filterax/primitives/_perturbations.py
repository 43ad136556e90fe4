"""Perturbed observations ``y + epsilon_j``, ``epsilon_j ~ N(0, R)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._covariance_checks import check_prng_key
from ._missing import fill_missing, observation_mask
from ._noise import NoiseLike, as_noise_operator, noise_sqrt
from ._validation import check_vector


def perturbed_observations(
    key: PRNGKeyArray,
    obs: Float[ArrayLike, " N_y"],
    obs_noise: NoiseLike,
    n_ensemble: int,
    *,
    center: bool = False,
) -> Float[Array, "N_e N_y"]:
    r"""An ensemble of perturbed observations for the stochastic (perturbed-obs) EnKF.

    $$y^{(j)} = y + \epsilon^{(j)}, \qquad \epsilon^{(j)} = L z^{(j)},\;
    z^{(j)} \sim \mathcal N(0, I),\; L L^\top = R,$$

    with the square root chosen by structure (`noise_sqrt`): diagonal ``R`` takes the fast
    path ``epsilon_k = z_k sqrt(R_kk)``; ``R = diag(d) + U U^T`` the rectangular root
    ``[diag(sqrt(d)), U]``; dense ``R`` its Cholesky factor.

    With ``center=True`` the sample mean of the perturbations is subtracted, so they average to
    exactly zero over the ensemble (DAPPER's ``mean0(...)`` in its ``PertObs`` EnKF). That
    removes the sampling error of the mean without biasing the covariance: the
    Bessel-corrected (``ddof=1``) sample covariance of the centred perturbations is still an
    unbiased estimator of ``R``, because it subtracts the same sample mean anyway.

    Same `key` ⇒ bit-identical draws. Missing entries (NaN in `obs`) stay NaN.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `obs`: the observation vector ``y``, shape ``(N_y,)``, NaN where missing.
    - `obs_noise`: ``R`` in any form `as_noise_operator` accepts.
    - `n_ensemble`: ``N_e``, the number of perturbed copies (static Python int, ``>= 1``;
        ``>= 2`` with ``center=True``).
    - `center`: subtract the perturbations' sample mean (static Python bool).

    **Returns:** the perturbed observations, shape ``(N_e, N_y)``.

    **Reference:** Burgers, van Leeuwen & Evensen (1998), *MWR* 126; Houtekamer & Mitchell
    (1998), *MWR* 126. DAPPER: ``D = mean0(hnoise.sample(N))`` in ``EnKF_analysis``
    (``PertObs``); EnsembleKalmanProcesses.jl: ``rand(MvNormal(0, Γ), N_ens)`` in the EKI
    update.

    !!! Example

        ```python
        import jax
        import jax.numpy as jnp
        from filterax.primitives import perturbed_observations

        D = perturbed_observations(jax.random.key(0), jnp.zeros(3), 0.5, 100, center=True)
        D.shape, D.mean(axis=0)  # (100, 3), ~[0, 0, 0] to round-off
        ```
    """
    check_prng_key(key, "perturbed_observations(key=...)")
    check_vector(obs, "obs (the observation vector, NaN where missing)")
    obs = jnp.asarray(obs)
    if not isinstance(n_ensemble, int) or isinstance(n_ensemble, bool) or n_ensemble < 1:
        raise ValueError(
            f"n_ensemble must be a positive Python int (it sets the output shape); got "
            f"{n_ensemble!r}."
        )
    if center and n_ensemble < 2:
        raise ValueError(
            "center=True needs n_ensemble >= 2: a single centred perturbation is identically "
            "zero. Pass more members or center=False."
        )
    n_obs = obs.shape[0]
    dtype = obs.dtype if jnp.issubdtype(obs.dtype, jnp.floating) else jnp.result_type(float)
    noise = as_noise_operator(obs_noise, n_obs, dtype=dtype)
    root = noise_sqrt(noise)
    if lx.is_diagonal(root):
        # Elementwise fast path (no vmapped matvec): eps_k = z_k sqrt(R_kk).
        std = jnp.asarray(lx.diagonal(root)).astype(dtype)
        z = jax.random.normal(key, (n_ensemble, n_obs), dtype)
        eps = z * std[None, :]
    else:
        z = jax.random.normal(key, (n_ensemble, root.in_size()), dtype)
        eps = jax.vmap(root.mv)(z).astype(dtype)
    if center:
        eps = eps - jnp.mean(eps, axis=0, keepdims=True)
    mask = observation_mask(obs)
    filled = fill_missing(obs.astype(dtype), mask)
    nan = jnp.full((), jnp.nan, dtype)
    return jnp.where(mask[None, :], filled[None, :] + eps, nan)
