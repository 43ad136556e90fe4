r"""Conditional normalising flows ``p_θ(x | y)`` written in equinox: coupling layers and the flow.

A conditional flow is an invertible map ``x = T_θ(z; y)`` from a standard-normal base variable
``z`` to the data ``x``, for every value of the conditioning variable ``y``; by the change of
variables

$$\log p_θ(x \mid y) = \log \mathcal N(T_θ^{-1}(x; y); 0, I)
+ \log\left|\det \partial_x T_θ^{-1}(x; y)\right|.$$

``T_θ`` is a composition of layers (`AbstractConditionalBijection`), listed in the
data-to-base order: `ConditionalFlow.inverse` applies ``layers[0].inverse``, then
``layers[1].inverse``, ...; `ConditionalFlow.forward` applies them backwards. The first layer of
the conditional-flow filter is the closed-form EnKF normaliser (`EnKFNormaliser`); the others
are coupling layers (Dinh, Sohl-Dickstein & Bengio 2017) whose conditioner is an equinox MLP of
``(x_cond, y)`` with a zero-initialised last layer, so an untrained coupling is the identity.

These layers are written here rather than taken from flowjax because the conditional-flow
filter fits them *inside* the compiled assimilation loop (`fit_conditional_flow` is a
`lax.scan` of optax steps); flowjax's ``fit_to_data`` is a host-side Python loop.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

__all__ = [
    "AbstractConditionalBijection",
    "AffineCoupling",
    "ConditionalFlow",
    "RationalQuadraticSplineCoupling",
    "conditional_flow",
]

_LOG_2PI = math.log(2.0 * math.pi)


class AbstractConditionalBijection(eqx.Module):
    """One invertible layer ``x = f(z; y)`` of a conditional flow, acting on ONE sample.

    - ``forward(z, y) -> (x, log|det ∂x/∂z|)``;
    - ``inverse(x, y) -> (z, log|det ∂z/∂x|)``;
    - ``context(y) -> y'``: the conditioning variable handed to the layers after this one in the
      data-to-base order (the identity for coupling layers; `EnKFNormaliser` standardises ``y``).
    """

    @abc.abstractmethod
    def forward(
        self, z: Float[Array, " N_x"], y: Float[Array, " N_y"]
    ) -> tuple[Float[Array, " N_x"], Real[Array, ""]]:
        """Base-to-data direction and its log-determinant."""

    @abc.abstractmethod
    def inverse(
        self, x: Float[Array, " N_x"], y: Float[Array, " N_y"]
    ) -> tuple[Float[Array, " N_x"], Real[Array, ""]]:
        """Data-to-base direction and its log-determinant."""

    @abc.abstractmethod
    def context(self, y: Float[Array, " N_y"]) -> Float[Array, " N_y"]:
        """The conditioning variable the next layers (data-to-base order) see."""


def _check_mask(mask: Sequence[bool], name: str) -> tuple[int, ...]:
    flags = tuple(bool(m) for m in mask)
    if len(flags) == 0 or not any(flags):
        raise ValueError(
            f"{name}: the mask must have one entry per component of x (N_x >= 1) and transform "
            f"at least one of them (True = transformed); got {tuple(mask)!r}."
        )
    return flags


def _conditioner(
    key: PRNGKeyArray, n_in: int, n_out: int, width: int, depth: int, name: str
) -> eqx.nn.MLP:
    if n_in < 1:
        raise ValueError(
            f"{name}: the conditioner has no input: a coupling that transforms every component "
            "of x needs a conditioning variable y with N_y >= 1."
        )
    if not (isinstance(width, int) and width >= 1 and isinstance(depth, int) and depth >= 0):
        raise ValueError(
            f"{name}: width must be an int >= 1 and depth an int >= 0; got width={width!r}, "
            f"depth={depth!r}."
        )
    mlp = eqx.nn.MLP(n_in, n_out, width, depth, activation=jax.nn.tanh, key=key)
    # Zero last layer => zero raw parameters => the coupling starts as the identity.
    last = mlp.layers[-1]
    return eqx.tree_at(
        lambda m: (m.layers[-1].weight, m.layers[-1].bias),
        mlp,
        (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
    )


class _Split(eqx.Module):
    """Static index bookkeeping of a coupling: which components condition, which transform."""

    cond: tuple[int, ...] = eqx.field(static=True)
    trans: tuple[int, ...] = eqx.field(static=True)

    def raw(self, conditioner: eqx.nn.MLP, x: Array, y: Array) -> Array:
        inputs = jnp.concatenate([x[jnp.asarray(self.cond, int)], y]) if self.cond else y
        return conditioner(inputs.astype(conditioner.layers[0].weight.dtype))

    def merge(self, x: Array, new: Array) -> Array:
        return x.at[jnp.asarray(self.trans, int)].set(new.astype(x.dtype))


def _make_split(flags: tuple[int, ...]) -> _Split:
    return _Split(
        cond=tuple(i for i, f in enumerate(flags) if not f),
        trans=tuple(i for i, f in enumerate(flags) if f),
    )


class AffineCoupling(AbstractConditionalBijection):
    r"""Conditional affine coupling (real NVP; Dinh, Sohl-Dickstein & Bengio 2017).

    With ``x_c`` the components the mask leaves alone and ``x_t`` those it transforms,

    $$x_c = z_c,\qquad x_t = z_t \odot e^{s} + t,\qquad (s, t) = \mathrm{NN}(z_c, y),$$

    ``log|det ∂x/∂z| = Σ s``. The log-scale is soft-clipped, ``s = b \tanh(\tilde s / b)``
    (`scale_bound` ``b``), so a badly trained step cannot overflow ``exp``. A 1-d ``x``
    (``mask=[True]``) conditions on ``y`` alone.

    **Arguments:**

    - `key`: initialises the conditioner MLP (its last layer is zero: the layer starts as the
      identity).
    - `mask`: ``N_x`` booleans, ``True`` where the component is transformed.
    - `n_y`: the size of the conditioning variable.
    - `width`, `depth`: the conditioner MLP's hidden width and number of hidden layers.
    - `scale_bound`: ``b`` above (default 5).

    **Reference:** Dinh, Sohl-Dickstein & Bengio (2017), *ICLR*; flowjax's ``AffineCoupling``.
    """

    conditioner: eqx.nn.MLP
    split: _Split
    scale_bound: float = eqx.field(static=True)

    def __init__(
        self,
        key: PRNGKeyArray,
        mask: Sequence[bool],
        n_y: int,
        *,
        width: int = 32,
        depth: int = 2,
        scale_bound: float = 5.0,
    ):
        flags = _check_mask(mask, "AffineCoupling")
        self.split = _make_split(flags)
        n_t = len(self.split.trans)
        self.conditioner = _conditioner(
            key, len(self.split.cond) + int(n_y), 2 * n_t, width, depth, "AffineCoupling"
        )
        self.scale_bound = float(scale_bound)

    def _shift_log_scale(self, x: Array, y: Array) -> tuple[Array, Array]:
        raw = self.split.raw(self.conditioner, x, y)
        n_t = len(self.split.trans)
        b = self.scale_bound
        return raw[:n_t], b * jnp.tanh(raw[n_t:] / b)

    def forward(
        self, z: Float[Array, " N_x"], y: Float[Array, " N_y"]
    ) -> tuple[Float[Array, " N_x"], Real[Array, ""]]:
        shift, log_scale = self._shift_log_scale(z, y)
        zt = z[jnp.asarray(self.split.trans, int)]
        return self.split.merge(z, zt * jnp.exp(log_scale) + shift), jnp.sum(log_scale)

    def inverse(
        self, x: Float[Array, " N_x"], y: Float[Array, " N_y"]
    ) -> tuple[Float[Array, " N_x"], Real[Array, ""]]:
        shift, log_scale = self._shift_log_scale(x, y)
        xt = x[jnp.asarray(self.split.trans, int)]
        return self.split.merge(x, (xt - shift) * jnp.exp(-log_scale)), -jnp.sum(log_scale)

    def context(self, y: Float[Array, " N_y"]) -> Float[Array, " N_y"]:
        return y


def _spline_knots(
    raw: Array, n_bins: int, bound: float, min_width: float, min_height: float, min_deriv: float
) -> tuple[Array, Array, Array]:
    """Knot abscissae, ordinates (``K + 1`` each) and derivatives (``K + 1``, 1 at the ends)."""
    dtype = raw.dtype
    raw_w, raw_h, raw_d = raw[:n_bins], raw[n_bins : 2 * n_bins], raw[2 * n_bins :]

    def knots(r: Array, min_bin: float) -> Array:
        widths = min_bin + (1.0 - min_bin * n_bins) * jax.nn.softmax(r)
        inner = -bound + 2.0 * bound * jnp.cumsum(widths)[:-1]
        edge = jnp.full((1,), bound, dtype)
        return jnp.concatenate([-edge, inner, edge])

    # softplus(0 + c) = 1 - min_deriv: zero raw parameters give unit derivatives (identity).
    offset = math.log(math.expm1(1.0 - min_deriv))
    inner_d = min_deriv + jax.nn.softplus(raw_d + offset)
    one = jnp.ones((1,), dtype)
    return knots(raw_w, min_width), knots(raw_h, min_height), jnp.concatenate([one, inner_d, one])


def _rq_spline(
    x: Array,
    raw: Array,
    *,
    inverse: bool,
    n_bins: int,
    bound: float,
    min_width: float,
    min_height: float,
    min_deriv: float,
) -> tuple[Array, Array]:
    """The scalar monotone rational-quadratic spline (or its inverse) and ``log|dout/din|``."""
    xs, ys, ds = _spline_knots(raw, n_bins, bound, min_width, min_height, min_deriv)
    inside = (x >= -bound) & (x <= bound)
    # Evaluate at the clipped input: finite values and gradients at (and beyond) the edges;
    # outside the interval the layer is the identity, selected below.
    xc = jnp.clip(x, -bound, bound)
    grid = ys if inverse else xs
    k = jnp.clip(jnp.sum(xc >= grid[1:-1]), 0, n_bins - 1)
    x_k, w_k = xs[k], xs[k + 1] - xs[k]
    y_k, h_k = ys[k], ys[k + 1] - ys[k]
    d_k, d_k1 = ds[k], ds[k + 1]
    s_k = h_k / w_k
    bend = d_k1 + d_k - 2.0 * s_k
    if inverse:
        dy = xc - y_k
        a = h_k * (s_k - d_k) + dy * bend
        b = h_k * d_k - dy * bend
        c = -s_k * dy
        disc = jnp.maximum(b * b - 4.0 * a * c, 0.0)
        xi = jnp.clip(2.0 * c / (-b - jnp.sqrt(disc)), 0.0, 1.0)
        out = x_k + xi * w_k
    else:
        xi = (xc - x_k) / w_k
        out = y_k + h_k * (s_k * xi**2 + d_k * xi * (1.0 - xi)) / (s_k + bend * xi * (1.0 - xi))
    one_m = 1.0 - xi
    num = s_k**2 * (d_k1 * xi**2 + 2.0 * s_k * xi * one_m + d_k * one_m**2)
    # s_k + bend ξ(1-ξ) > 0 for a monotone spline (Durkan et al. 2019, eq. 5)
    log_deriv = jnp.log(num) - 2.0 * jnp.log(s_k + bend * xi * one_m)
    if inverse:
        log_deriv = -log_deriv
    return jnp.where(inside, out, x), jnp.where(inside, log_deriv, jnp.zeros_like(log_deriv))


class RationalQuadraticSplineCoupling(AbstractConditionalBijection):
    r"""Conditional monotone rational-quadratic spline coupling (Durkan et al. 2019).

    Each transformed component goes through its own monotone spline with ``K`` bins on
    ``[-B, B]``, its knots and interior derivatives produced by ``NN(z_c, y)``. In bin ``k``
    with ``ξ = (z - z_k)/w_k``, ``s_k = h_k / w_k``:

    $$x = x_k + h_k\,\frac{s_k ξ^2 + d_k ξ(1-ξ)}{s_k + (d_{k+1} + d_k - 2 s_k) ξ (1-ξ)},$$

    identity outside ``[-B, B]`` (boundary derivatives fixed to 1, so the map is C¹ there).
    Widths and heights are ``min + (1 - K min) softmax(·)``, interior derivatives
    ``min_derivative + softplus(·)``, shifted so zero raw parameters give uniform bins and unit
    derivatives: the identity. Inputs are clipped to ``[-B, B]`` before the spline is evaluated
    and the identity is selected outside, so values and gradients stay finite at and beyond the
    interval's edges. The inverse solves the bin's quadratic in the stable form
    ``ξ = 2c / (-b - sqrt(b^2 - 4ac))``.

    **Arguments:**

    - `key`, `mask`, `n_y`, `width`, `depth`: as `AffineCoupling`.
    - `n_bins`: ``K`` (default 8).
    - `interval`: ``B`` (default 4: the layer acts on roughly standardised variables).
    - `min_bin_width`, `min_bin_height`, `min_derivative`: lower bounds (default ``1e-3``).

    **Reference:** Durkan, Bekasov, Murray & Papamakarios (2019), "Neural spline flows",
    *NeurIPS*; flowjax's ``RationalQuadraticSpline``.
    """

    conditioner: eqx.nn.MLP
    split: _Split
    n_bins: int = eqx.field(static=True)
    interval: float = eqx.field(static=True)
    min_bin_width: float = eqx.field(static=True)
    min_bin_height: float = eqx.field(static=True)
    min_derivative: float = eqx.field(static=True)

    def __init__(
        self,
        key: PRNGKeyArray,
        mask: Sequence[bool],
        n_y: int,
        *,
        width: int = 32,
        depth: int = 2,
        n_bins: int = 8,
        interval: float = 4.0,
        min_bin_width: float = 1e-3,
        min_bin_height: float = 1e-3,
        min_derivative: float = 1e-3,
    ):
        flags = _check_mask(mask, "RationalQuadraticSplineCoupling")
        if not (isinstance(n_bins, int) and n_bins >= 2):
            raise ValueError(f"n_bins must be an int >= 2; got {n_bins!r}.")
        if not interval > 0:
            raise ValueError(f"interval (B of [-B, B]) must be positive; got {interval!r}.")
        if not (0 < min_bin_width * n_bins < 1 and 0 < min_bin_height * n_bins < 1):
            raise ValueError(
                "min_bin_width and min_bin_height must be positive with n_bins * min < 1; got "
                f"{min_bin_width!r}, {min_bin_height!r} for n_bins={n_bins}."
            )
        if not 0 < min_derivative < 1:
            raise ValueError(f"min_derivative must be in (0, 1); got {min_derivative!r}.")
        self.split = _make_split(flags)
        n_t = len(self.split.trans)
        self.conditioner = _conditioner(
            key,
            len(self.split.cond) + int(n_y),
            n_t * (3 * n_bins - 1),
            width,
            depth,
            "RationalQuadraticSplineCoupling",
        )
        self.n_bins = n_bins
        self.interval = float(interval)
        self.min_bin_width = float(min_bin_width)
        self.min_bin_height = float(min_bin_height)
        self.min_derivative = float(min_derivative)

    def _apply(self, v: Array, y: Array, inverse: bool) -> tuple[Array, Array]:
        raw = self.split.raw(self.conditioner, v, y).astype(v.dtype)
        raw = raw.reshape(len(self.split.trans), 3 * self.n_bins - 1)
        vt = v[jnp.asarray(self.split.trans, int)]

        def one(xi: Array, r: Array) -> tuple[Array, Array]:
            return _rq_spline(
                xi,
                r,
                inverse=inverse,
                n_bins=self.n_bins,
                bound=self.interval,
                min_width=self.min_bin_width,
                min_height=self.min_bin_height,
                min_deriv=self.min_derivative,
            )

        out, log_deriv = jax.vmap(one)(vt, raw)
        return self.split.merge(v, out), jnp.sum(log_deriv)

    def forward(
        self, z: Float[Array, " N_x"], y: Float[Array, " N_y"]
    ) -> tuple[Float[Array, " N_x"], Real[Array, ""]]:
        return self._apply(z, y, inverse=False)

    def inverse(
        self, x: Float[Array, " N_x"], y: Float[Array, " N_y"]
    ) -> tuple[Float[Array, " N_x"], Real[Array, ""]]:
        return self._apply(x, y, inverse=True)

    def context(self, y: Float[Array, " N_y"]) -> Float[Array, " N_y"]:
        return y


class ConditionalFlow(eqx.Module):
    r"""A conditional normalising flow ``x = T(z; y)``, ``z ~ N(0, I)``: a stack of layers.

    `layers` are in the data-to-base order: ``T^{-1} = f_L^{-1} ∘ ... ∘ f_1^{-1}`` with
    ``f_1 = layers[0]`` (the EnKF normaliser in the conditional-flow filter). Each layer sees
    the conditioning variable as the layers before it (data-to-base) hand it on
    (`AbstractConditionalBijection.context`). All methods act on ONE sample; `jax.vmap` them.

    - ``forward(z, y) -> (x, log|det ∂x/∂z|)``;
    - ``inverse(x, y) -> (z, log|det ∂z/∂x|)``;
    - ``log_prob(x, y) = log N(z; 0, I) + log|det ∂z/∂x|``;
    - ``sample(key, y, n) -> (n, N_x)`` draws of ``x | y``.

    **Arguments:**

    - `layers`: a sequence of `AbstractConditionalBijection` (see `conditional_flow` for the
      usual stack).

    **Reference:** Papamakarios, Nalisnick, Rezende, Mohamed & Lakshminarayanan (2021),
    "Normalizing flows for probabilistic modeling and inference", *JMLR* 22.

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        from filterax.learn import conditional_flow

        flow = conditional_flow(jax.random.key(0), 2, 1, n_layers=2)
        x, y = jnp.array([0.3, -1.0]), jnp.array([0.5])
        flow.log_prob(x, y)  # log N(x; 0, I) while the flow is untrained
        ```
    """

    layers: tuple[AbstractConditionalBijection, ...]

    def __init__(self, layers: Sequence[AbstractConditionalBijection]):
        layers = tuple(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, AbstractConditionalBijection):
                raise TypeError(
                    f"layers[{i}] must be an AbstractConditionalBijection (AffineCoupling, "
                    "RationalQuadraticSplineCoupling, EnKFNormaliser); got "
                    f"{type(layer).__name__}."
                )
        if not layers:
            raise ValueError("a ConditionalFlow needs at least one layer.")
        self.layers = layers

    def _contexts(self, y: Array) -> list[Array]:
        contexts = [y]
        for layer in self.layers[:-1]:
            contexts.append(layer.context(contexts[-1]))
        return contexts

    def inverse(
        self, x: Float[ArrayLike, " N_x"], y: Float[ArrayLike, " N_y"]
    ) -> tuple[Float[Array, " N_x"], Real[Array, ""]]:
        """``z = T^{-1}(x; y)`` and ``log|det ∂z/∂x|``."""
        z, y = jnp.asarray(x), jnp.asarray(y)
        total = jnp.zeros((), z.dtype)
        for layer, c in zip(self.layers, self._contexts(y), strict=True):
            z, ld = layer.inverse(z, c)
            total = total + ld
        return z, total

    def forward(
        self, z: Float[ArrayLike, " N_x"], y: Float[ArrayLike, " N_y"]
    ) -> tuple[Float[Array, " N_x"], Real[Array, ""]]:
        """``x = T(z; y)`` and ``log|det ∂x/∂z|``."""
        x, y = jnp.asarray(z), jnp.asarray(y)
        total = jnp.zeros((), x.dtype)
        for layer, c in reversed(list(zip(self.layers, self._contexts(y), strict=True))):
            x, ld = layer.forward(x, c)
            total = total + ld
        return x, total

    def log_prob(self, x: Float[ArrayLike, " N_x"], y: Float[ArrayLike, " N_y"]) -> Real[Array, ""]:
        """``log p(x | y)`` under the standard-normal base."""
        z, ld = self.inverse(x, y)
        return -0.5 * (jnp.sum(z * z) + z.shape[0] * _LOG_2PI) + ld

    def sample(
        self, key: PRNGKeyArray, y: Float[ArrayLike, " N_y"], n: int, *, n_x: int | None = None
    ) -> Float[Array, "n N_x"]:
        """``n`` draws ``x = T(z; y)``, ``z ~ N(0, I)`` (``n_x`` from the layers if omitted)."""
        size = self.n_x if n_x is None else n_x
        y = jnp.asarray(y)
        z = jax.random.normal(key, (n, size), y.dtype)
        return jax.vmap(lambda zi: self.forward(zi, y)[0])(z)

    @property
    def n_x(self) -> int:
        """The size of ``x`` as the layers know it."""
        for layer in self.layers:
            split = getattr(layer, "split", None)
            if split is not None:
                return len(split.cond) + len(split.trans)
            mean_x = getattr(layer, "mean_x", None)
            if mean_x is not None:
                return int(mean_x.shape[0])
        raise ValueError("cannot tell N_x from the layers: pass n_x to sample.")


def conditional_flow(
    key: PRNGKeyArray,
    n_x: int,
    n_y: int,
    *,
    n_layers: int = 4,
    kind: str = "spline",
    width: int = 32,
    depth: int = 2,
    normaliser: bool = False,
    **coupling_kwargs: Any,
) -> ConditionalFlow:
    """The usual stack: ``n_layers`` couplings with alternating (even/odd) masks.

    Layer ``l`` transforms the components ``i`` with ``(i + l)`` even (a 1-d ``x`` is
    transformed by every layer, conditioned on ``y`` only). With ``normaliser=True`` the first
    layer is an identity `EnKFNormaliser` (as the conditional-flow filter needs; it replaces it
    each cycle by the closed-form one).

    **Arguments:**

    - `key`: initialises the conditioners.
    - `n_x`, `n_y`: sizes of ``x`` and of the conditioning variable ``y``.
    - `n_layers`: the number of couplings.
    - `kind`: ``"spline"`` (`RationalQuadraticSplineCoupling`) or ``"affine"``
      (`AffineCoupling`).
    - `width`, `depth`: the conditioner MLPs' size.
    - `normaliser`: prepend an identity `EnKFNormaliser`.
    - `coupling_kwargs`: passed to every coupling (``n_bins``, ``interval``, ...).

    **Returns:** a `ConditionalFlow`; untrained, it is the identity map.
    """
    from ._enkf_normaliser import EnKFNormaliser

    if kind not in ("spline", "affine"):
        raise ValueError(f"kind must be 'spline' or 'affine'; got {kind!r}.")
    if not (isinstance(n_x, int) and n_x >= 1 and isinstance(n_y, int) and n_y >= 0):
        raise ValueError(f"n_x must be an int >= 1 and n_y an int >= 0; got {n_x!r}, {n_y!r}.")
    if not (isinstance(n_layers, int) and n_layers >= 0):
        raise ValueError(f"n_layers must be an int >= 0; got {n_layers!r}.")
    cls = RationalQuadraticSplineCoupling if kind == "spline" else AffineCoupling
    layers: list[AbstractConditionalBijection] = []
    if normaliser:
        layers.append(EnKFNormaliser.identity(n_x, n_y))
    layer_keys = jax.random.split(key, max(n_layers, 1))
    for lyr in range(n_layers):
        layer_key = layer_keys[lyr]
        mask = [True] if n_x == 1 else [(i + lyr) % 2 == 0 for i in range(n_x)]
        layers.append(cls(layer_key, mask, n_y, width=width, depth=depth, **coupling_kwargs))
    return ConditionalFlow(layers)
