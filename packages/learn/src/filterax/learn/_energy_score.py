r"""The energy score of an ensemble: the multivariate CRPS (Gneiting & Raftery 2007)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

__all__ = ["energy_score"]


def _safe_norm(diff: Array, axis: int = -1) -> Array:
    # |v| with a zero (not NaN) gradient at v = 0: the i = l terms of the pair sum and a
    # member equal to the target would otherwise give 0/0 in the backward pass.
    sq = jnp.sum(jnp.square(diff), axis=axis)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, jnp.ones((), sq.dtype))), 0.0)


def energy_score(
    ensemble: Float[ArrayLike, "N_e N_d"],
    target: Float[ArrayLike, " N_d"],
    *,
    fair: bool = True,
) -> Float[Array, ""]:
    r"""Energy score of an ensemble against one verifying vector (lower is better).

    $$\mathrm{ES} = \frac1{N_e}\sum_{i=1}^{N_e}\|x^{(i)} - y\|
    - \frac{1}{2 N_e D}\sum_{i,l=1}^{N_e}\|x^{(i)} - x^{(l)}\|,\qquad
    D = \begin{cases} N_e - 1 & \text{fair (default)}\\ N_e & \text{standard}\end{cases}$$

    with the Euclidean norm over the observed components: NaN (or inf) entries of `target`
    are missing and dropped from every norm (zero weight, shapes unchanged; all missing gives
    0). The standard form is the energy score of the ensemble's empirical distribution; the
    fair form is unbiased for the score of the distribution the members are drawn from
    (Ferro 2014's adjustment applied to the energy kernel). In one dimension the norm is an
    absolute value and ES is *exactly* the CRPS in its kernel form
    (`filterax.primitives.crps_ensemble`, same `fair`).

    Differentiable everywhere except where two members (or a member and the target)
    coincide, where the gradient of the norm is taken as zero. Cost ``O(N_e^2 N_d)``.

    **Arguments:**

    - `ensemble`: ``(N_e, N_d)`` members, ensemble axis first.
    - `target`: ``(N_d,)`` the verifying truth or observation (NaN where missing).
    - `fair`: the unbiased ``N_e (N_e - 1)`` normalisation (needs ``N_e >= 2``) or
      ``N_e^2``.

    **Returns:** the scalar score (units of the verified quantity).

    **Reference:** Gneiting & Raftery (2007), *JASA* 102, 359-378, eq. 22; Gneiting,
    Stanberry, Grimit, Held & Johnson (2008), *TEST* 17, 211-235 (ensemble estimator);
    Ferro (2014), *QJRMS* 140 (fair scores). No DAPPER equivalent.

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.learn import energy_score

    energy_score(jnp.array([[0.0, 0.0], [3.0, 4.0]]), jnp.zeros(2), fair=False)
    # (0 + 5)/2 - (2 * 5)/(2 * 4) = 1.25
    ```
    """
    ensemble = jnp.asarray(ensemble)
    target = jnp.asarray(target)
    if ensemble.ndim != 2:
        raise ValueError(
            f"energy_score: ensemble must be (N_e, N_d) with the ensemble axis first; got shape "
            f"{ensemble.shape}. For a time series, jax.vmap over the time axis."
        )
    n_members, n_dim = ensemble.shape
    if target.shape != (n_dim,):
        raise ValueError(
            f"energy_score: target must have shape (N_d,) = ({n_dim},) to match the ensemble; "
            f"got {target.shape}."
        )
    if not jnp.issubdtype(ensemble.dtype, jnp.floating):
        raise TypeError(f"energy_score: ensemble must be floating; got dtype {ensemble.dtype}.")
    if n_members < (2 if fair else 1):
        raise ValueError(
            f"energy_score(fair={fair}) needs at least {2 if fair else 1} member(s); got "
            f"N_e={n_members}. Use fair=False for a single member."
        )
    target = target.astype(ensemble.dtype)
    mask = jnp.isfinite(target)
    zero = jnp.zeros((), ensemble.dtype)
    filled = jnp.where(mask, target, zero)
    skill = jnp.mean(_safe_norm(jnp.where(mask[None, :], ensemble - filled[None, :], zero)))
    pair_diff = jnp.where(mask[None, None, :], ensemble[:, None, :] - ensemble[None, :, :], zero)
    denominator = n_members * (n_members - 1) if fair else n_members**2
    spread = jnp.sum(_safe_norm(pair_diff)) / (2 * denominator)
    return skill - spread
