"""Missing observations: NaN entries mean "not observed", handled without changing shapes.

The trick (shape-stable, so `jit` compiles once for any pattern of gaps): at every missing
entry ``i`` zero the innovation ``v_i`` and the observed-ensemble anomalies ``Y'_{:, i}``, and
replace row and column ``i`` of the noise covariance by those of the identity. After a
permutation the innovation covariance is then ``blockdiag(S_obs, I)``, so

- ``log|S| = log|S_obs|`` and ``v^T S^{-1} v = v_obs^T S_obs^{-1} v_obs`` exactly;
- the gain ``C^{xH} S^{-1}`` has exactly zero columns at missing entries and equals the gain of
  the observed subset elsewhere.

NaN never enters arithmetic: it is replaced by `jnp.where` *before* any operation, so neither
values nor gradients (the `jnp.where` NaN-gradient trap) can be poisoned.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, Bool, Float

from ._lowrank import LowRankUpdate
from ._noise import _DENSE_TAGS, _noise_diagonal
from ._validation import check_vector


def observation_mask(obs: Float[ArrayLike, " N_y"]) -> Bool[Array, " N_y"]:
    r"""Which entries of an observation vector are observed (finite).

    $$m_i = [\,y_i \text{ is finite}\,].$$

    The one rule for missing data: a NaN entry marks a missing observation, and so does an
    infinite one (``±inf`` carries no usable information; every filter gives it zero weight
    instead of letting it turn the analysis into NaN).

    **Arguments:**

    - `obs`: the observation vector, shape ``(N_y,)``, NaN (or ±inf) where missing.

    **Returns:** a boolean array, ``True`` where observed.

    **Reference:** DAPPER marks gaps by leaving observations out of ``Obs``; filterax keeps the
    shape (the Conventions page of the docs, missing observations) so `jit` compiles once.

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import observation_mask

        observation_mask(jnp.array([1.0, jnp.nan, jnp.inf]))  # [True, False, False]
        ```
    """
    check_vector(obs, "obs (the observation vector, NaN where missing)")
    return jnp.isfinite(jnp.asarray(obs))


def fill_missing(
    obs: Float[ArrayLike, " N_y"], mask: Bool[ArrayLike, " N_y"] | None = None
) -> Float[Array, " N_y"]:
    r"""Replace missing (NaN) observation entries by zero, leaving the shape unchanged.

    $$\tilde y_i = m_i\, y_i.$$

    **Arguments:**

    - `obs`: the observation vector, shape ``(N_y,)``.
    - `mask`: the observed mask (computed from `obs` if omitted).

    **Returns:** `obs` with NaNs replaced by ``0``; gradients at missing entries are zero.

    **Reference:** the Conventions page of the docs (missing observations: zero weight,
    shapes unchanged).

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import fill_missing

        fill_missing(jnp.array([1.0, jnp.nan]))  # [1., 0.]
        ```
    """
    obs = jnp.asarray(obs)
    if mask is None:
        mask = observation_mask(obs)
    check_vector(mask, "mask", obs.shape[0])
    return jnp.where(mask, obs, jnp.zeros((), obs.dtype))


def mask_anomalies(
    anomalies: Float[ArrayLike, "N_e N_y"], mask: Bool[ArrayLike, " N_y"]
) -> Float[Array, "N_e N_y"]:
    r"""Zero the observation-space anomalies (or innovations) at missing entries.

    $$Y'_{ji} \leftarrow m_i\, Y'_{ji}.$$

    **Arguments:**

    - `anomalies`: observed-ensemble anomalies (or any ensemble in observation space), shape
        ``(N_e, N_y)``.
    - `mask`: the observed mask, shape ``(N_y,)``.

    **Returns:** the anomalies with the columns of missing entries set to zero.

    **Reference:** the Conventions page of the docs (missing observations: zero weight,
    shapes unchanged).

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import mask_anomalies

        mask_anomalies(jnp.ones((3, 2)), jnp.array([True, False]))  # second column zero
        ```
    """
    anomalies = jnp.asarray(anomalies)
    if anomalies.ndim != 2:
        raise ValueError(f"anomalies must be an (N_e, N_y) array; got shape {anomalies.shape}.")
    check_vector(mask, "mask", anomalies.shape[1])
    return jnp.where(jnp.asarray(mask)[None, :], anomalies, jnp.zeros((), anomalies.dtype))


@functools.singledispatch
def mask_noise(
    noise: lx.AbstractLinearOperator, mask: Bool[ArrayLike, " N_y"]
) -> lx.AbstractLinearOperator:
    r"""Replace the rows and columns of missing entries of a noise covariance by the identity's.

    $$R_{ij} \leftarrow m_i m_j R_{ij} + (1 - m_i)\,\delta_{ij}.$$

    Structure is kept: diagonal ``-> d_i = 1``; `LowRankUpdate` ``-> U_{i,:} = 0, d_i = 1``;
    dense ``->`` zero row/column with a unit diagonal entry. The rule is chosen by the
    operator's type (a `functools.singledispatch` registry): register one for a new noise
    structure with ``@mask_noise.register(MyOperator)`` to keep it structured (see
    `noise_whitening`); unregistered types are masked in their dense form.

    **Arguments:**

    - `noise`: the ``(N_y, N_y)`` noise operator.
    - `mask`: the observed mask, shape ``(N_y,)``.

    **Returns:** an operator of the same structure and size.

    **Reference:** the Conventions page of the docs (missing observations: zero weight,
    shapes unchanged).

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.primitives import diagonal_noise, mask_noise

        mask_noise(diagonal_noise(jnp.array([2.0, 3.0])), jnp.array([True, False]))
        # diag([2., 1.])
        ```
    """
    if not isinstance(noise, lx.AbstractLinearOperator):
        raise TypeError(
            f"mask_noise needs a lineax operator; got {type(noise).__name__}. Convert arrays with "
            "filterax.primitives.as_noise_operator(noise, n) first."
        )
    n = noise.in_size()
    check_vector(mask, "mask", n)
    mask = jnp.asarray(mask)
    if lx.is_diagonal(noise):
        d = _noise_diagonal(noise)
        return lx.DiagonalLinearOperator(jnp.where(mask, d, jnp.ones((), d.dtype)))
    matrix = noise.as_matrix()
    keep = mask[:, None] & mask[None, :]
    eye = jnp.eye(n, dtype=matrix.dtype)
    return lx.MatrixLinearOperator(jnp.where(keep, matrix, eye), _DENSE_TAGS)


@mask_noise.register(LowRankUpdate)
def _(noise: LowRankUpdate, mask: Bool[ArrayLike, " N_y"]) -> LowRankUpdate:
    check_vector(mask, "mask", noise.in_size())
    mask = jnp.asarray(mask)
    factor = jnp.where(mask[:, None], noise.factor, jnp.zeros((), noise.factor.dtype))
    one = jnp.ones((), noise.factor.dtype)
    if noise.diagonal is None:
        diagonal = jnp.where(mask, jnp.zeros((), one.dtype), one)
    else:
        diagonal = jnp.where(mask, noise.diagonal, one)
    return LowRankUpdate(factor, diagonal)
