r"""Learnable pieces of a model: a residual-corrected dynamics and a local (stencil) MLP.

Master list 8.5 (pattern A: learn the dynamics, e.g. an equinox network correcting a biased
model) and 8.6 (pattern B: learn the observation operator). Both are `eqx.Module`s whose
array leaves `fit` / `fit_windows` train through `filterax.filters.run`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

__all__ = ["ResidualDynamics", "ResidualObsOperator", "StencilMLP"]


class StencilMLP(eqx.Module):
    r"""One small MLP applied at every site of a periodic 1-D grid to the site's neighbourhood.

    $$f(x)_i = s_\text{out}\,\text{MLP}_\theta\big(x_{i-r}/s_\text{in}, \dots,
    x_{i+r}/s_\text{in}\big),\qquad i = 0, \dots, N_x - 1\ (\text{indices mod } N_x),$$

    the same weights at every site (translation-equivariant, like the Lorenz-96 tendency,
    whose stencil is ``i-2 .. i+1``; a 1-D convolution with a nonlinear kernel). With
    ``radius = 0`` it is one scalar function applied pointwise (e.g. a learned pointwise
    observation operator ``y_i = h_\theta(x_i)``).

    **Arguments:**

    - `radius`: the stencil half-width ``r`` (static int ``>= 0``).
    - `width`, `depth`: hidden width and number of hidden layers of the `eqx.nn.MLP`.
    - `key`: PRNG key for the weights.
    - `activation`: hidden activation (default `jax.nn.tanh`).
    - `input_scale`, `output_scale`: ``s_in`` and ``s_out`` (static floats): put the inputs
      in the activation's working range and set the size of the initial outputs.
    - `zero_output`: start with the last layer's weights and bias at zero, so ``f = 0``
      (a residual correction that starts from the uncorrected model).

    **Reference:** the local, translation-equivariant networks of hybrid ML–DA on Lorenz-96
    (Brajard, Carrassi, Bocquet & Bertino 2020, *J. Comput. Sci.* 44). Not in Bach, Baptista,
    Luk & Stuart (2025).

    **Example:**

    ```python
    net = StencilMLP(radius=2, width=16, depth=1, key=jax.random.key(0), input_scale=8.0,
                     zero_output=True)
    net(jnp.ones(40)).shape  # (40,)
    ```
    """

    mlp: eqx.nn.MLP
    radius: int = eqx.field(static=True)
    input_scale: float = eqx.field(static=True)
    output_scale: float = eqx.field(static=True)

    def __init__(
        self,
        radius: int,
        width: int,
        depth: int,
        *,
        key: PRNGKeyArray,
        activation: Callable[[Array], Array] = jax.nn.tanh,
        input_scale: float = 1.0,
        output_scale: float = 1.0,
        zero_output: bool = False,
        dtype: Any = None,
    ):
        for name, value, low in (("radius", radius, 0), ("width", width, 1), ("depth", depth, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"StencilMLP({name}=...) must be a Python int >= {low}; got {value!r}."
                )
        for name, value in (("input_scale", input_scale), ("output_scale", output_scale)):
            if not isinstance(value, int | float) or not value > 0 or value == float("inf"):
                raise ValueError(
                    f"StencilMLP({name}=...) must be a finite positive float; got {value!r}."
                )
        mlp = eqx.nn.MLP(
            2 * radius + 1, "scalar", width, depth, activation=activation, key=key, dtype=dtype
        )
        if zero_output:
            last = mlp.layers[-1]
            mlp = eqx.tree_at(
                lambda m: (m.layers[-1].weight, m.layers[-1].bias),
                mlp,
                (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
            )
        self.mlp = mlp
        self.radius = radius
        self.input_scale = float(input_scale)
        self.output_scale = float(output_scale)

    def __call__(self, x: Float[Array, " N_x"]) -> Float[Array, " N_x"]:
        x = jnp.asarray(x)
        if x.ndim != 1 or x.shape[0] < 2 * self.radius + 1:
            raise ValueError(
                f"StencilMLP acts on ONE state of shape (N_x,) with N_x >= 2 * radius + 1 = "
                f"{2 * self.radius + 1}; got shape {x.shape}. vmap it over an ensemble."
            )
        offsets = range(-self.radius, self.radius + 1)
        stencils = jnp.stack([jnp.roll(x, -j) for j in offsets], axis=1) / self.input_scale
        weight_dtype = self.mlp.layers[0].weight.dtype
        out = jax.vmap(self.mlp)(stencils.astype(weight_dtype))
        return (self.output_scale * out).astype(x.dtype)


class ResidualDynamics(eqx.Module):
    r"""A dynamics with a learned additive correction over each forecast window.

    $$\mathcal M_\theta(x; t_0, t_1) = \mathcal M_0(x; t_0, t_1) + f_\theta(x)$$

    (the "resolvent correction" of hybrid ML–DA: the network learns what the biased model
    ``M_0`` misses over one observation interval). The correction does not depend on
    ``t_1 - t_0``: train and use it with one fixed observation interval.

    **Arguments:**

    - `base`: the physical model, ``base(x, t0, t1) -> x`` on ONE state.
    - `correction`: ``correction(x) -> dx`` on ONE state (e.g. a `StencilMLP` with
      ``zero_output=True``), the trainable part.

    **Reference:** Brajard, Carrassi, Bocquet & Bertino (2020), *J. Comput. Sci.* 44; Farchi
    et al. (2021), *QJRMS* 147 (resolvent correction). Not in Bach, Baptista, Luk & Stuart
    (2025).

    **Example:**

    ```python
    model = ResidualDynamics(Lorenz96(forcing=7.0),
                             StencilMLP(2, 16, 1, key=key, input_scale=8.0, zero_output=True))
    ```
    """

    base: Callable[..., Any]
    correction: Callable[[Array], Array]

    def __check_init__(self) -> None:
        if not callable(self.base) or not callable(self.correction):
            raise TypeError(
                "ResidualDynamics needs base(x, t0, t1) -> x and correction(x) -> dx, both "
                "callable on ONE state."
            )

    def __call__(
        self, x: Float[Array, " N_x"], t0: Real[ArrayLike, ""], t1: Real[ArrayLike, ""]
    ) -> Float[Array, " N_x"]:
        forecast = self.base(x, t0, t1)
        dx = jnp.asarray(self.correction(x))
        if dx.shape != forecast.shape:
            raise ValueError(
                f"ResidualDynamics: correction(x) must have the state's shape {forecast.shape}; "
                f"got {dx.shape}."
            )
        return forecast + dx.astype(forecast.dtype)


class ResidualObsOperator(eqx.Module):
    r"""An observation operator with a learned additive correction.

    $$H_\theta(x) = H_0(x) + f_\theta(x)$$

    (``H_0`` the identity by default). With a zero-initialised ``f_\theta`` (`StencilMLP`
    with ``zero_output=True``) training starts from the linear guess ``H_0`` and learns the
    nonlinearity it misses. A randomly initialised network in place of ``H_\theta`` usually
    makes the first filter runs diverge (it maps the state to nearly constant observations,
    so the analysis increments blow up): start from a sensible ``H_0``.

    **Arguments:**

    - `correction`: ``correction(x) -> y`` on ONE state, with the observation's shape.
    - `base`: ``base(x) -> y`` on ONE state, or ``None`` for the identity.

    **Reference:** master list 8.6 (pattern B, a neural observation operator learned through
    the filter). Not in Bach, Baptista, Luk & Stuart (2025).
    """

    correction: Callable[[Array], Array]
    base: Callable[[Array], Array] | None = None

    def __check_init__(self) -> None:
        if not callable(self.correction) or not (self.base is None or callable(self.base)):
            raise TypeError(
                "ResidualObsOperator needs correction(x) -> y (and base(x) -> y or None), "
                "callable on ONE state."
            )

    def __call__(self, x: Float[Array, " N_x"]) -> Float[Array, " N_y"]:
        x = jnp.asarray(x)
        y0 = x if self.base is None else jnp.asarray(self.base(x))
        dy = jnp.asarray(self.correction(x))
        if dy.shape != y0.shape:
            raise ValueError(
                f"ResidualObsOperator: correction(x) must have the observation's shape "
                f"{y0.shape}; got {dy.shape}."
            )
        return y0 + dy.astype(y0.dtype)
