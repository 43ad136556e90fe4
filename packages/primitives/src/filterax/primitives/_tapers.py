"""Localisation tapers rho(d; r).

A taper maps a distance ``d >= 0`` and a length scale ``radius > 0`` to a weight in [0, 1]
with weight 1 at ``d = 0``. Tapers act elementwise (any shape of ``d``), are jit/vmap-safe, and
have finite gradients with respect to both ``d`` and ``radius`` (branches that would divide by
zero are fed a dummy argument through the "double where" pattern). ``hard_cutoff`` is the one
documented exception: its derivative is zero almost everywhere and undefined at ``d = r``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Real, ScalarLike

from ._validation import as_float_parameter, check_positive, concrete_value

__all__ = [
    "DAPPER_GC_FACTOR",
    "dapper_radius_to_gc_halfwidth",
    "gaspari_cohn",
    "gaussian_taper",
    "hard_cutoff",
    "soar_taper",
]

#: DAPPER's factor between its ``loc_rad`` and the Gaspari-Cohn half-width ``c``: ``c =
#: 1.82 loc_rad`` (a rounding of sqrt(10/3) = 1.8257, which matches the curvature of the GC
#: function at 0 to that of exp(-d^2 / (2 loc_rad^2))).
DAPPER_GC_FACTOR = 1.82


def _prepare(d: Any, radius: Any, name: str) -> tuple[Array, Array]:
    radius = check_positive(radius, f"{name}: radius")
    d = jnp.asarray(d)
    radius = jnp.asarray(radius)
    if radius.ndim != 0:
        raise ValueError(
            f"{name}: radius must be a scalar; got shape {radius.shape}. To evaluate several "
            "radii, jax.vmap over the radius."
        )
    dtype = jnp.result_type(d, radius, float)
    return d.astype(dtype), radius.astype(dtype)


def dapper_radius_to_gc_halfwidth(loc_rad: ScalarLike) -> Float[Array, ""]:
    """Convert DAPPER's localisation radius `loc_rad` to the Gaspari-Cohn half-width `c`.

    $c = 1.82\\,\\texttt{loc\\_rad}$. DAPPER's `loc_rad` is the length $L$ at which the taper
    is (approximately, for GC) $e^{-1/2}$; the GC function with half-width $c = \\sqrt{10/3}L
    \\approx 1.82L$ matches the Gaussian $\\exp(-d^2/2L^2)$ in curvature at 0, has support
    $[0, 2c]$, and takes the value 0.634 (vs $e^{-1/2} = 0.607$) at $d = L$.

    **Arguments:**

    - `loc_rad`: DAPPER's `loc_rad` (e.g. `loc 4` in a DAPPER LETKF configuration).

    **Returns:**

    The half-width `c` to pass as `radius` to `gaspari_cohn` / `GaspariCohnLocalizer`.

    DAPPER equivalent: the `R = radius * 1.82` line of `dist2coeff(..., tag="GC")`.

    **Example:**

    ```python
    c = dapper_radius_to_gc_halfwidth(4.0)  # 7.28; support of the taper is [0, 14.56]
    ```
    """
    loc_rad = as_float_parameter(loc_rad)
    if concrete_value(loc_rad) is not None:
        # stays a concrete value under a trace, so a filter built from it checks it now
        with jax.ensure_compile_time_eval():
            return loc_rad * DAPPER_GC_FACTOR
    return loc_rad * DAPPER_GC_FACTOR


def gaspari_cohn(d: Real[ArrayLike, "*shape"], radius: ScalarLike) -> Float[Array, "*shape"]:
    """Gaspari & Cohn (1999) fifth-order piecewise rational taper, eq. (4.10).

    With $z = |d| / c$ and half-width $c$ = `radius`:

    $$\\rho(z) = \\begin{cases}
    -\\tfrac14 z^5 + \\tfrac12 z^4 + \\tfrac58 z^3 - \\tfrac53 z^2 + 1, & 0 \\le z \\le 1,\\\\
    \\tfrac1{12} z^5 - \\tfrac12 z^4 + \\tfrac58 z^3 + \\tfrac53 z^2 - 5z + 4
    - \\tfrac{2}{3z}, & 1 < z \\le 2,\\\\
    0, & z > 2.\\end{cases}$$

    Compactly supported on $[0, 2c]$, equal to 1 at 0, $C^2$ everywhere (the two branches meet
    at $z = 1$ with value 5/24 and the second branch vanishes to second order at $z = 2$) and
    positive definite in up to three dimensions, so the Schur product with a covariance stays a
    covariance.

    **Arguments:**

    - `d`: distances (any shape, $\\ge 0$; the absolute value is used).
    - `radius`: the GC half-width $c$ (NOT DAPPER's `loc_rad`; see
      `dapper_radius_to_gc_halfwidth`: $c = 1.82\\,\\texttt{loc\\_rad}$).

    **Returns:**

    Taper weights in $[0, 1]$, same shape as `d`.

    Reference: G. Gaspari and S. E. Cohn (1999), "Construction of correlation functions in two
    and three dimensions", QJRMS 125, 723-757, eq. (4.10).
    DAPPER equivalent: `dist2coeff(d, loc_rad, tag="GC")` == `gaspari_cohn(d, 1.82 * loc_rad)`.

    **Example:**

    ```python
    gaspari_cohn(jnp.array([0.0, 1.0, 2.0]), radius=1.0)  # [1.0, 0.2083, 0.0]
    ```
    """
    d, c = _prepare(d, radius, "gaspari_cohn")
    z = jnp.abs(d) / c
    inner = (((-0.25 * z + 0.5) * z + 0.625) * z - 5.0 / 3.0) * z**2 + 1.0
    # The outer branch has a 1/z pole at 0; evaluate it only on z in (1, 2] so that neither the
    # value nor the gradient of the unselected branch can be NaN.
    in_outer = (z > 1.0) & (z <= 2.0)
    zo = jnp.where(in_outer, z, 1.5)
    outer = ((((zo / 12.0 - 0.5) * zo + 0.625) * zo + 5.0 / 3.0) * zo - 5.0) * zo + 4.0
    outer = outer - 2.0 / (3.0 * zo)
    # Rounding can leave the polynomial a hair below 0 near z = 2; tapers are weights.
    return jnp.clip(jnp.where(z <= 1.0, inner, jnp.where(in_outer, outer, 0.0)), 0.0, 1.0)


def gaussian_taper(d: Real[ArrayLike, "*shape"], radius: ScalarLike) -> Float[Array, "*shape"]:
    """Gaussian taper $\\rho(d) = \\exp(-d^2 / (2 r^2))$.

    Not compactly supported (every pair keeps a positive weight), smooth, and equal to
    $e^{-1/2}$ at $d = r$, i.e. `radius` is exactly DAPPER's `loc_rad`.

    **Arguments:**

    - `d`: distances (any shape).
    - `radius`: the length scale $r$.

    **Returns:**

    Taper weights in $(0, 1]$, same shape as `d`.

    DAPPER equivalent: `dist2coeff(d, r, tag="Gauss")`.

    **Example:**

    ```python
    gaussian_taper(jnp.array([0.0, 2.0]), radius=2.0)  # [1.0, 0.6065]
    ```
    """
    d, r = _prepare(d, radius, "gaussian_taper")
    return jnp.exp(-0.5 * (d / r) ** 2)


def soar_taper(d: Real[ArrayLike, "*shape"], radius: ScalarLike) -> Float[Array, "*shape"]:
    """Second-order auto-regressive (SOAR) taper $\\rho(d) = (1 + |d|/r)\\exp(-|d|/r)$.

    Positive definite in up to three dimensions, heavier-tailed than the Gaussian, with a
    vanishing first derivative at 0.

    **Arguments:**

    - `d`: distances (any shape).
    - `radius`: the length scale $r$.

    **Returns:**

    Taper weights in $(0, 1]$, same shape as `d`.

    Reference: Gaspari & Cohn (1999), §3 (the SOAR correlation function).

    **Example:**

    ```python
    soar_taper(jnp.array([0.0, 1.0]), radius=1.0)  # [1.0, 2/e = 0.7358]
    ```
    """
    d, r = _prepare(d, radius, "soar_taper")
    z = jnp.abs(d) / r
    return (1.0 + z) * jnp.exp(-z)


def hard_cutoff(d: Real[ArrayLike, "*shape"], radius: ScalarLike) -> Float[Array, "*shape"]:
    """Hard cut-off (box) taper $\\rho(d) = \\mathbb 1[|d| \\le r]$.

    The documented non-differentiable taper: its derivative with respect to `d` and `radius`
    is returned as 0 (finite), which is the true derivative except on the set $|d| = r$. Do not
    tune `radius` by gradient descent with it; use `gaspari_cohn` instead. Not positive
    definite: a Schur product with it can make a covariance indefinite (use it for
    R-localisation / observation selection).

    **Arguments:**

    - `d`: distances (any shape).
    - `radius`: the cut-off $r$ (pairs at exactly $d = r$ are kept).

    **Returns:**

    Weights in $\\{0, 1\\}$, same shape as `d`, in the floating dtype of the inputs.

    DAPPER equivalent: `dist2coeff(d, r, tag="Step")`.

    **Example:**

    ```python
    hard_cutoff(jnp.array([0.5, 1.0, 1.5]), radius=1.0)  # [1.0, 1.0, 0.0]
    ```
    """
    d, r = _prepare(d, radius, "hard_cutoff")
    return jnp.where(jnp.abs(d) <= r, 1.0, 0.0).astype(d.dtype)
