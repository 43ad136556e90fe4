r"""Positive reparameterisations: learn a positive hyper-parameter through an unconstrained one.

Inflation factors (``>= 1``), localisation radii (``> 0``) and observation-error variances
(``> 0``) are trained as an unconstrained raw value ``u`` mapped through a smooth bijection
onto ``(lower, inf)``, so a gradient step can never leave the valid range (a factor below 1, a
negative variance that would make the run's noise check fail). Each transform has its exact
inverse, to start training from a chosen value.

Master list 8.7 (pattern C: "constrained-via-exp reparameterisation").
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real

import filterax.primitives as fxp

__all__ = ["AbstractPositiveTransform", "ExpPositive", "SoftplusPositive"]


def _check_lower(lower: float, owner: str) -> float:
    if isinstance(lower, bool) or not isinstance(lower, int | float) or not np.isfinite(lower):
        raise ValueError(
            f"{owner}(lower=...) must be a finite Python float (the bound the values stay "
            f"above, e.g. 1.0 for an inflation factor, 0.0 for a radius); got {lower!r}."
        )
    return float(lower)


def _floating(x: ArrayLike, name: str) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        # An integer raw value would silently have no gradient.
        raise TypeError(
            f"{name} must be a floating-point array; got dtype {x.dtype}. Pass e.g. "
            "jnp.asarray(1.0) instead of 1."
        )
    return x


class AbstractPositiveTransform(eqx.Module):
    r"""A smooth bijection ``g`` from the real line onto ``(lower, inf)``, elementwise.

    - ``transform(raw) -> value``: ``value = g(raw) > lower``;
    - ``transform.inverse(value) -> raw``: ``g^{-1}``, for the starting raw value (concrete
      values at or below `lower` raise a `ValueError`).

    Train ``raw`` (an unconstrained array leaf of the parameters) and build the filter from
    ``transform(raw)``.
    """

    lower: eqx.AbstractVar[float]

    @abc.abstractmethod
    def __call__(self, raw: Real[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """The constrained value ``g(raw)``."""

    @abc.abstractmethod
    def inverse(self, value: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """The raw value ``g^{-1}(value)``."""

    def _check_value(self, value: ArrayLike) -> Array:
        value = _floating(value, f"{type(self).__name__}.inverse(value)")
        concrete = fxp.concrete_value(value)
        if concrete is not None and not np.all(concrete > self.lower):
            raise ValueError(
                f"{type(self).__name__}.inverse: every value must be > lower = {self.lower} "
                f"(the transform maps onto (lower, inf)); got min {np.min(concrete)!r}. Start "
                "from a value inside the range, e.g. an inflation factor 1.05 with lower=1.0."
            )
        return value


class SoftplusPositive(AbstractPositiveTransform):
    r"""``value = lower + softplus(raw)``, with its inverse.

    $$g(u) = \ell + \log(1 + e^{u}),\qquad g^{-1}(v) = s + \log(1 - e^{-s}),\ s = v - \ell .$$

    Linear for large ``u`` (gradients neither explode nor vanish for large values), ``g(u)
    \to \ell`` as ``u \to -\infty``. Use ``lower=1.0`` for a multiplicative inflation factor.

    **Arguments:**

    - `lower`: the bound (static Python float, default 0).

    **Reference:** not from Bach, Baptista, Luk & Stuart (2025), whose inflation and radius
    are evaluated on grids (§3.5, Figs 5–6); master list 8.7 (pattern C).

    **Example:**

    ```python
    infl = SoftplusPositive(lower=1.0)
    raw = infl.inverse(jnp.asarray(1.05))   # start training at 1.05
    factor = infl(raw)                      # 1.05, and > 1 for every raw
    ```
    """

    lower: float = eqx.field(static=True, default=0.0)

    def __check_init__(self) -> None:
        _check_lower(self.lower, "SoftplusPositive")

    def __call__(self, raw: Real[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        raw = _floating(raw, "SoftplusPositive(raw)")
        return self.lower + jax.nn.softplus(raw)

    def inverse(self, value: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        s = self._check_value(value) - self.lower
        # log(expm1(s)) without overflow for large s.
        return s + jnp.log(-jnp.expm1(-s))


class ExpPositive(AbstractPositiveTransform):
    r"""``value = lower + exp(raw)``, with its inverse.

    $$g(u) = \ell + e^{u},\qquad g^{-1}(v) = \log(v - \ell).$$

    Scale-free steps (a step in ``u`` is a relative change of ``v - \ell``): the natural
    choice for a localisation radius or an observation-error variance, whose plausible values
    span orders of magnitude.

    **Arguments:**

    - `lower`: the bound (static Python float, default 0).

    **Reference:** master list 8.7 (pattern C, "constrained-via-exp"); not in Bach, Baptista,
    Luk & Stuart (2025).

    **Example:**

    ```python
    pos = ExpPositive()
    raw_r = pos.inverse(jnp.full(40, 2.0))  # R-diagonal starting at 2
    obs_noise = lx.DiagonalLinearOperator(pos(raw_r))
    ```
    """

    lower: float = eqx.field(static=True, default=0.0)

    def __check_init__(self) -> None:
        _check_lower(self.lower, "ExpPositive")

    def __call__(self, raw: Real[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        raw = _floating(raw, "ExpPositive(raw)")
        return self.lower + jnp.exp(raw)

    def inverse(self, value: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        return jnp.log(self._check_value(value) - self.lower)
