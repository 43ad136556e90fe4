"""Linear observation operators: identity, dense matrix, and component selection.

Each acts on ONE state vector ``(N_x,) -> (N_y,)``; apply to an ensemble with
``jax.vmap(obs_op)(X)``. Each also exposes its dense matrix through ``matrix(n_state)`` so
that exact Kalman references and tests can use ``H`` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from ._protocols import AbstractObsOperator

_HIGHEST = jax.lax.Precision.HIGHEST


def _check_state(x: Any, n_state: int | None, owner: str) -> Array:
    x = jnp.asarray(x)
    if x.ndim != 1:
        raise ValueError(
            f"{owner} acts on ONE state vector of shape (N_x,); got shape {x.shape}. For an "
            "ensemble (N_e, N_x) use jax.vmap(obs_op)(X)."
        )
    if n_state is not None and x.shape[0] != n_state:
        raise ValueError(
            f"{owner} expects a state of length N_x={n_state}; got length {x.shape[0]}. "
            "Build the operator for this state size."
        )
    return x


def _check_n_state(n_state: Any) -> int:
    if isinstance(n_state, bool) or not isinstance(n_state, int | np.integer) or n_state < 1:
        raise ValueError(f"n_state must be a positive Python int (N_x); got {n_state!r}.")
    return int(n_state)


def _default_float(dtype: Any) -> Any:
    return jnp.result_type(float) if dtype is None else dtype


class IdentityObs(AbstractObsOperator):
    r"""Observe the full state: $H(x) = x$, $H = I_{N_x}$.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    from filterax.primitives import IdentityObs

    H = IdentityObs()
    jax.vmap(H)(jnp.ones((10, 3))).shape  # (10, 3)
    H.matrix(3)  # eye(3)
    ```

    DAPPER equivalent: `dapper.mods.utils.Id_Obs(Nx)`.
    """

    def __call__(self, x: Float[Array, " N_x"]) -> Float[Array, " N_y"]:
        """Return `x` unchanged (a `(N_x,)` state)."""
        return _check_state(x, None, "IdentityObs()")

    def n_obs(self, n_state: int) -> int:
        """Number of observations `N_y` for a state of length `n_state` (`= n_state`)."""
        return _check_n_state(n_state)

    def matrix(self, n_state: int, dtype: Any = None) -> Float[Array, "N_y N_x"]:
        """The dense `(n_state, n_state)` identity matrix (default float dtype if `None`)."""
        return jnp.eye(_check_n_state(n_state), dtype=_default_float(dtype))


class LinearObs(AbstractObsOperator):
    r"""A dense linear observation operator $H(x) = H x$ with $H \in \mathbb R^{N_y \times N_x}$.

    `H` is an ordinary (dynamic) field, so `jax.grad` can differentiate with respect to it
    (e.g. to learn an observation operator) and `jax.vmap` can batch over it. The matrix-vector
    product uses `Precision.HIGHEST` so GPU TF32 does not degrade it.

    **Arguments:**

    - `H`: a 2-D array `(N_y, N_x)`. Integer/bool arrays are cast to the default float dtype.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    from filterax.primitives import LinearObs

    H = LinearObs(jnp.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]))
    H(jnp.array([1.0, 2.0, 4.0]))  # [1.0, 3.0]
    jax.vmap(H)(jnp.ones((10, 3))).shape  # (10, 2)
    ```

    DAPPER equivalent: an `Obs` dict with `model = lambda x, t: x @ H.T` and
    `linear = lambda x, t: H` (as built by `dapper.mods.utils.partial_Id_Obs`).
    """

    H: Float[Array, "N_y N_x"]

    def __init__(self, H: ArrayLike):
        H = jnp.asarray(H)
        if H.ndim != 2:
            raise ValueError(
                f"LinearObs needs a 2-D matrix H of shape (N_y, N_x); got shape {H.shape}. "
                "For a single observed linear functional use H[None, :]; to observe "
                "selected components use IndexObs(indices)."
            )
        if H.shape[0] < 1 or H.shape[1] < 1:
            raise ValueError(f"LinearObs needs a non-empty matrix H; got shape {H.shape}.")
        if not jnp.issubdtype(H.dtype, jnp.inexact):
            H = H.astype(jnp.result_type(float))
        self.H = H

    def __call__(self, x: Float[Array, " N_x"]) -> Float[Array, " N_y"]:
        """Return `H @ x` for one `(N_x,)` state."""
        x = _check_state(x, self.H.shape[1], "LinearObs(H)")
        return jnp.matmul(self.H, x, precision=_HIGHEST)

    def n_obs(self, n_state: int | None = None) -> int:
        """Number of observations `N_y` (checks `n_state` against `N_x` when given)."""
        if n_state is not None:
            self._check_columns(n_state)
        return self.H.shape[0]

    def matrix(self, n_state: int | None = None, dtype: Any = None) -> Float[Array, "N_y N_x"]:
        """The matrix `H` itself (checks `n_state` against `N_x` when given)."""
        if n_state is not None:
            self._check_columns(n_state)
        return self.H if dtype is None else self.H.astype(dtype)

    def _check_columns(self, n_state: int) -> None:
        if _check_n_state(n_state) != self.H.shape[1]:
            raise ValueError(
                f"LinearObs has N_x={self.H.shape[1]} columns but n_state={n_state} was given."
            )


class IndexObs(AbstractObsOperator):
    r"""Observe a subset of state components: $H(x) = (x_{i_1}, \dots, x_{i_{N_y}})$.

    $H$ is the selection matrix with $H_{k, i_k} = 1$ (rows of the identity). Indices may
    repeat (the same component observed twice).

    Two storage modes, chosen from what you pass:

    - Python ints, a list/tuple/range or a NumPy array: stored as a static tuple, checked
      against the state length at trace time (an out-of-range index raises `ValueError`).
    - A JAX integer array: stored as a dynamic leaf, so the observed set can change over time
      inside `lax.scan` or be batched with `jax.vmap` (same `N_y`). Out-of-range indices are
      caught at trace time when concrete, and otherwise at run time via `eqx.error_if`.

    **Arguments:**

    - `indices`: 1-D, non-empty, non-negative integer indices into the state.

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.primitives import IndexObs

    H = IndexObs([0, 2])
    H(jnp.array([1.0, 2.0, 3.0]))  # [1.0, 3.0]
    H.matrix(3)  # [[1, 0, 0], [0, 0, 1]]
    ```

    DAPPER equivalent: `dapper.mods.utils.partial_Id_Obs(Nx, obs_inds)`.
    """

    static_indices: tuple[int, ...] | None = eqx.field(static=True)
    array_indices: Int[Array, " N_y"] | None

    def __init__(self, indices: ArrayLike | Sequence[Any]):
        if isinstance(indices, jax.Array):
            self.static_indices = None
            self.array_indices = _validate_indices(indices)
        else:
            self.static_indices = tuple(int(i) for i in _validate_indices(np.asarray(indices)))
            self.array_indices = None

    @property
    def indices(self) -> Int[Array, " N_y"]:
        """The observed component indices as an integer array."""
        if self.static_indices is not None:
            return jnp.asarray(self.static_indices)
        return self.array_indices

    def __call__(self, x: Float[Array, " N_x"]) -> Float[Array, " N_y"]:
        """Return the observed components `x[indices]` of one `(N_x,)` state."""
        x = _check_state(x, None, "IndexObs(indices)")
        index = self._checked_indices(x.shape[0])
        return x[index]

    def n_obs(self, n_state: int | None = None) -> int:
        """Number of observations `N_y` (the number of indices)."""
        if n_state is not None:
            self._checked_indices(_check_n_state(n_state))
        if self.static_indices is not None:
            return len(self.static_indices)
        return self.array_indices.shape[0]

    def matrix(self, n_state: int, dtype: Any = None) -> Float[Array, "N_y N_x"]:
        """The dense `(N_y, n_state)` selection matrix (default float dtype if `None`)."""
        n_state = _check_n_state(n_state)
        index = self._checked_indices(n_state)
        n_obs = index.shape[0]
        eye_rows = jnp.zeros((n_obs, n_state), dtype=_default_float(dtype))
        return eye_rows.at[jnp.arange(n_obs), index].set(1)

    def _checked_indices(self, n_state: int) -> Any:
        if self.static_indices is not None:
            largest = max(self.static_indices)
            if largest >= n_state:
                raise ValueError(
                    f"IndexObs observes component {largest}, but the state has only "
                    f"N_x={n_state} components (valid indices 0..{n_state - 1})."
                )
            return np.asarray(self.static_indices)
        index = self.array_indices
        try:
            concrete = np.asarray(index)
        except Exception:  # traced: check at run time instead
            in_range = jnp.all(index < n_state)
            return eqx.error_if(
                index, ~in_range, f"IndexObs index out of range for a state of length {n_state}"
            )
        if concrete.max() >= n_state:
            raise ValueError(
                f"IndexObs observes component {int(concrete.max())}, but the state has only "
                f"N_x={n_state} components (valid indices 0..{n_state - 1})."
            )
        return index


def _validate_indices(indices: Any) -> Any:
    shape = np.shape(indices)
    if len(shape) != 1:
        raise ValueError(
            f"IndexObs needs a 1-D sequence of indices; got shape {shape}. Wrap a single "
            "index in a list: IndexObs([i])."
        )
    if shape[0] == 0:
        raise ValueError("IndexObs needs at least one index; got an empty sequence.")
    dtype = indices.dtype
    if not (jnp.issubdtype(dtype, jnp.signedinteger) or jnp.issubdtype(dtype, jnp.unsignedinteger)):
        raise TypeError(
            f"IndexObs indices must be integers; got dtype {dtype}. Pass e.g. [0, 2, 4] or "
            "jnp.arange(0, n, 2); convert a boolean mask with jnp.flatnonzero(mask)."
        )
    try:
        concrete = np.asarray(indices)
    except Exception:  # a tracer: checked when the operator is applied
        return indices
    if np.any(concrete < 0):
        raise ValueError(
            f"IndexObs indices must be non-negative; got {concrete.tolist()}. Convert negative "
            "indices with i % n_state."
        )
    return indices


def every_nth(n_state: int, step: int, offset: int = 0) -> IndexObs:
    r"""Observe every `step`-th state component, starting at `offset`.

    Builds `IndexObs(range(offset, n_state, step))`, e.g. `every_nth(40, 2)` observes
    components 0, 2, ..., 38 ("every other component", the sparse-observation setting of
    Bach, Baptista, Luk & Stuart 2025 and of DAPPER's `Lorenz96` examples).

    **Arguments:**

    - `n_state`: state length `N_x` (positive int).
    - `step`: spacing between observed components (positive int).
    - `offset`: first observed component, `0 <= offset < n_state`.

    **Returns:**

    An [`IndexObs`][filterax.primitives.IndexObs] with static indices.

    **Example:**

    ```python
    from filterax.primitives import every_nth

    every_nth(6, 2).static_indices  # (0, 2, 4)
    every_nth(6, 3, offset=1).static_indices  # (1, 4)
    ```
    """
    n_state = _check_n_state(n_state)
    for name, value in (("step", step), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{name} must be a Python int; got {value!r}.")
    if step < 1:
        raise ValueError(f"step must be >= 1 (1 observes every component); got {step}.")
    if not 0 <= offset < n_state:
        raise ValueError(f"offset must satisfy 0 <= offset < n_state={n_state}; got {offset}.")
    return IndexObs(range(int(offset), n_state, int(step)))


def apply_obs(obs_op: Any, x: Float[Array, " N_x"]) -> Float[Array, " N_y"]:
    """Apply an observation operator of any accepted form to ONE state.

    The forms every filterax function accepts for an observation operator ``H``:

    - a callable ``obs_op(x) -> y`` (an `AbstractObsOperator`, `IdentityObs`, a function);
    - a lineax operator (``H.mv(x)``);
    - an ``(N_y, N_x)`` matrix (``H @ x`` at full matmul precision).

    **Arguments:**

    - `obs_op`: the operator, in one of the forms above.
    - `x`: one state ``(N_x,)``.

    **Returns:** ``H(x)``, shape ``(N_y,)``.

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.primitives import apply_obs

    apply_obs(jnp.eye(2, 3), jnp.arange(3.0))  # [0., 1.]
    ```
    """
    if isinstance(obs_op, lx.AbstractLinearOperator):
        return obs_op.mv(x)
    if isinstance(obs_op, jax.Array | np.ndarray):
        if obs_op.ndim != 2:
            raise ValueError(
                f"an observation operator given as an array must be an (N_y, N_x) matrix; got "
                f"shape {obs_op.shape}. Pass a callable obs_op(x) -> y for other operators."
            )
        return jnp.matmul(obs_op, x, precision=_HIGHEST)
    if not callable(obs_op):
        raise TypeError(
            "obs_op must be a callable obs_op(x) -> y on ONE state, a lineax operator or an "
            f"(N_y, N_x) matrix; got {type(obs_op).__name__}."
        )
    return obs_op(x)
