r"""Amortised analysis maps: a permutation-equivariant network that corrects an analysis.

Issue 12 §2 ("a neural analysis map") and §3 ("an amortised analysis network"), master list
10.10 / 10.11. The learned map is *residual*: a base analysis kernel (ETKF, EnKF, ...) gives
``X^b = A(X^f, y)`` and a network adds a correction,

$$x^a_i = x^b_i + s_\text{out}\,\rho\big(u_i, \phi(u_i), \tfrac1{N_e}\textstyle\sum_j
\phi(u_j)\big),\qquad u_i = \big(x^f_i / s_x,\ (x^f_i - \bar x^f)/s_a,\ (x^b_i - x^f_i)/s_a\big),$$

with ``\rho``'s last layer zero at initialisation, so the untrained filter IS the base filter
(the zero correction is exact, not approximate). Why residual on the analysis rather than a
learned gain on the forecast: the base analysis already carries the observation with the right
weight (and handles missing observations and any observation operator), so the network only
learns what the Gaussian update misses (non-Gaussian curvature on Lorenz-63, sampling error of a
small ensemble), starts as a filter that works, and never has to learn the Kalman update from
scratch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

import filterax.primitives as fxp

__all__ = ["AmortisedAnalysis", "EquivariantEnsembleNet"]

_N_FEATURES = 3


def _check_scale(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"EquivariantEnsembleNet({name}=...) must be a Python float; got {value!r}."
        )
    if not (value > 0 and value != float("inf")):
        raise ValueError(f"EquivariantEnsembleNet({name}=...) must be finite and > 0; got {value}.")
    return float(value)


class EquivariantEnsembleNet(eqx.Module):
    r"""A deep-sets network from (forecast ensemble, base analysis ensemble) to a correction.

    For member ``i`` (and, with a stencil, grid site ``s``) the input is
    ``u_i = (x^f_i/s_x, (x^f_i - \bar x^f)/s_a, (x^b_i - x^f_i)/s_a)`` (the forecast member,
    its anomaly and the base analysis increment), and

    $$h_i = \phi(u_i),\qquad \delta_i = s_\text{out}\,\rho\big(u_i, h_i,
    \tfrac1{N_e}\textstyle\sum_j h_j\big),$$

    ``\phi`` and ``\rho`` `eqx.nn.MLP`\ s, ``\rho``'s last layer zero-initialised. The pooled
    mean makes ``\delta`` PERMUTATION-EQUIVARIANT over members (Zaheer et al. 2017, deep
    sets): permuting the rows of ``X^f`` and ``X^b`` permutes the rows of ``\delta``.

    - ``radius=None`` (dense): ``u_i`` is the whole ``3 N_x`` vector and ``\rho`` outputs
      ``N_x`` numbers (Lorenz-63: the three variables are not interchangeable).
    - ``radius=r`` (stencil): on a periodic 1-D grid, ``u_{i,s}`` holds the three features at
      sites ``s-r .. s+r`` and ``\rho`` outputs one number per site, with the same weights at
      every site: TRANSLATION-EQUIVARIANT too (Lorenz-96), and independent of ``N_x``.

    **Arguments:**

    - `n_state`: ``N_x`` (static; used by the dense form, checked by both).
    - `width`, `depth`: hidden width and number of hidden layers of ``\phi`` and ``\rho``.
    - `key`: PRNG key for the weights.
    - `radius`: ``None`` (dense) or the stencil half-width (static int ``>= 0``).
    - `state_scale`, `anomaly_scale`: ``s_x`` and ``s_a`` (static): put the features in the
      activation's working range (e.g. the climatological sd and the typical forecast spread).
    - `output_scale`: ``s_out`` (static), the size of a unit output of ``\rho``.
    - `activation`: hidden activation (default `jax.nn.gelu`).
    - `dtype`: the weights' dtype (default: JAX's default float).

    **Returns** (``__call__(forecast, base_analysis)``): the ``(N_e, N_x)`` correction ``\delta``
    in the forecast's dtype.

    **Reference:** the permutation-invariant dependence of the analysis map on the forecast
    ensemble in Bach, Baptista, Luk & Stuart (2025), §2.3 (the map ``T_\theta(\cdot; y)`` of
    eq. 2.7 "depends on the collection \{\hat v^{(n)}\} in a permutation-invariant way") and
    their §5 outlook (neural analysis maps). The paper trains no network; this architecture is
    ours (deep sets: Zaheer et al. 2017; the local stencil: Brajard et al. 2020).

    **Example:**

    ```python
    net = EquivariantEnsembleNet(40, width=32, depth=1, key=jax.random.key(0), radius=2,
                                 state_scale=3.6, anomaly_scale=0.3, output_scale=0.1)
    net(Xf, Xb).shape  # (N_e, 40); zeros before training
    ```
    """

    phi: eqx.nn.MLP
    rho: eqx.nn.MLP
    n_state: int = eqx.field(static=True)
    radius: int | None = eqx.field(static=True)
    state_scale: float = eqx.field(static=True)
    anomaly_scale: float = eqx.field(static=True)
    output_scale: float = eqx.field(static=True)

    def __init__(
        self,
        n_state: int,
        width: int,
        depth: int,
        *,
        key: PRNGKeyArray,
        radius: int | None = None,
        state_scale: float = 1.0,
        anomaly_scale: float = 1.0,
        output_scale: float = 1.0,
        activation: Callable[[Array], Array] = jax.nn.gelu,
        dtype: Any = None,
    ):
        for name, value, low in (("n_state", n_state, 1), ("width", width, 1), ("depth", depth, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"EquivariantEnsembleNet({name}=...) must be a Python int >= {low}; got "
                    f"{value!r}."
                )
        if radius is not None and (
            isinstance(radius, bool) or not isinstance(radius, int) or radius < 0
        ):
            raise ValueError(
                "EquivariantEnsembleNet(radius=...) must be None (dense: the whole state per "
                f"member) or a Python int >= 0 (a periodic stencil); got {radius!r}."
            )
        if radius is not None and 2 * radius + 1 > n_state:
            raise ValueError(
                f"EquivariantEnsembleNet: a stencil of radius {radius} spans {2 * radius + 1} "
                f"sites, more than the {n_state} sites of the grid. Pass radius <= "
                f"{(n_state - 1) // 2}, or radius=None for a dense network."
            )
        self.state_scale = _check_scale("state_scale", state_scale)
        self.anomaly_scale = _check_scale("anomaly_scale", anomaly_scale)
        self.output_scale = _check_scale("output_scale", output_scale)
        dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"EquivariantEnsembleNet(dtype=...) must be a float dtype; got {dtype}."
            )
        self.n_state = int(n_state)
        self.radius = radius
        if radius is None:
            d_in, d_out = _N_FEATURES * n_state, n_state
        else:
            d_in, d_out = _N_FEATURES * (2 * radius + 1), 1
        k_phi, k_rho = jax.random.split(key)
        self.phi = eqx.nn.MLP(
            d_in, width, width, depth, activation=activation, key=k_phi, dtype=dtype
        )
        rho = eqx.nn.MLP(
            d_in + 2 * width, d_out, width, depth, activation=activation, key=k_rho, dtype=dtype
        )
        # Zero last layer: the correction is exactly 0 until trained (the base filter).
        last = rho.layers[-1]
        rho = eqx.tree_at(
            lambda m: (m.layers[-1].weight, m.layers[-1].bias),
            rho,
            (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
        )
        self.rho = rho

    def features(
        self, forecast: Float[Array, "N_e N_x"], base_analysis: Float[Array, "N_e N_x"]
    ) -> Float[Array, "N_e S D"]:
        """The network inputs ``u``: ``(N_e, 1, 3 N_x)`` dense or ``(N_e, N_x, 3(2r+1))``."""
        forecast = jnp.asarray(forecast)
        base_analysis = jnp.asarray(base_analysis)
        if forecast.ndim != 2 or forecast.shape[1] != self.n_state:
            raise ValueError(
                f"EquivariantEnsembleNet was built for N_x={self.n_state}: pass a forecast "
                f"ensemble of shape (N_e, {self.n_state}); got {forecast.shape}."
            )
        if base_analysis.shape != forecast.shape:
            raise ValueError(
                f"EquivariantEnsembleNet: the base analysis has shape {base_analysis.shape}, the "
                f"forecast {forecast.shape}; they must match."
            )
        dtype = self.phi.layers[0].weight.dtype
        forecast = forecast.astype(dtype)
        base_analysis = base_analysis.astype(dtype)
        mean = jnp.mean(forecast, axis=0, keepdims=True)
        feats = jnp.stack(
            [
                forecast / self.state_scale,
                (forecast - mean) / self.anomaly_scale,
                (base_analysis - forecast) / self.anomaly_scale,
            ],
            axis=-1,
        )  # (N_e, N_x, 3)
        n_e = forecast.shape[0]
        if self.radius is None:
            return feats.reshape(n_e, 1, _N_FEATURES * self.n_state)
        shifts = range(-self.radius, self.radius + 1)
        # roll by -o puts site s+o at position s: the stencil s-r .. s+r (periodic).
        stencil = jnp.concatenate([jnp.roll(feats, -o, axis=1) for o in shifts], axis=-1)
        return stencil

    def __call__(
        self, forecast: Float[Array, "N_e N_x"], base_analysis: Float[Array, "N_e N_x"]
    ) -> Float[Array, "N_e N_x"]:
        u = self.features(forecast, base_analysis)
        h = jax.vmap(jax.vmap(self.phi))(u)  # (N_e, S, W)
        pooled = jnp.broadcast_to(jnp.mean(h, axis=0, keepdims=True), h.shape)
        out = jax.vmap(jax.vmap(self.rho))(jnp.concatenate([u, h, pooled], axis=-1))
        correction = self.output_scale * out.reshape(forecast.shape[0], self.n_state)
        return correction.astype(jnp.asarray(forecast).dtype)


class AmortisedAnalysis(fxp.AbstractSequentialFilter):
    r"""An analysis kernel: a base ensemble analysis plus a learned equivariant correction.

    $$X^b = \text{base.analysis}(X^f, y),\qquad X^a = X^b + \delta_\theta(X^f, X^b)$$

    (`EquivariantEnsembleNet`). Run it as a cycled method with its post-processing,
    ``EnsembleFilter(AmortisedAnalysis(ETKF(), net), inflator=..., rotate=...)`` (or pass it
    to `filterax.filters.run` directly, which wraps it so): the driver forecasts, inflates,
    freezes on a non-finite analysis (``CycleInfo.finite`` is ``False`` when the network's
    output is NaN/inf) and differentiates through it; train the network with
    `fit_amortised` (windows supervised by a twin's truth) or `fit_windows`.

    - Untrained (the zero-initialised last layer), ``X^a = X^b`` exactly: the base filter.
    - Missing observations (NaN entries of ``y``) get zero weight in the base analysis; the
      network sees ``y`` only through ``X^b``, so nothing else changes.
    - ``log_likelihood`` is the base kernel's ``log p(y | X^f)`` (a property of the forecast).

    **Arguments:**

    - `base`: an analysis kernel (`filterax.filters.ETKF()`, `StochasticEnKF()`, ...). A
      localising base (`filterax.filters.LETKF`) needs its geometry in
      ``EnsembleFilter(context=fxp.geometry_context(model))`` (the driver gives the model's
      geometry only to a kernel that is itself an `AbstractLocalFilter`); without it
      `analysis` raises `ValueError`. With a stencil network the pair is local end to end.
    - `network`: an `EquivariantEnsembleNet` (any ``network(forecast, base_analysis) ->
      (N_e, N_x)`` equinox module works; equivariance is then yours to keep).

    **Returns** (``analysis``): a `filterax.primitives.Analysis` with the corrected particles.

    **Reference:** the sample-based analysis map ``v_{j+1}^{(n)} = T_\theta(\hat
    v_{j+1}^{(n)}; y_{j+1})`` of Bach, Baptista, Luk & Stuart (2025), §2.3 (eq. 2.7), with
    ``T_\theta`` = base analysis + network. The paper learns ``T_\theta`` with its VI loss
    (eq. 2.5 / 2.8); `fit_amortised` uses the ensemble CRPS against a twin's truth instead
    (a proper score that needs no density of the pushed-forward ensemble; departure).

    **Example:**

    ```python
    net = EquivariantEnsembleNet(3, width=32, depth=1, key=jax.random.key(0),
                                 state_scale=8.0, anomaly_scale=1.0, output_scale=0.1)
    method = ff.EnsembleFilter(AmortisedAnalysis(ff.ETKF(), net),
                               inflator=fxp.MultiplicativeInflator(1.02))
    out = ff.run(method, ssm, X0, xp.observations, xp.times, key=jax.random.key(1))
    ```
    """

    base: fxp.AbstractSequentialFilter
    network: Any

    def __init__(self, base: Any, network: Any):
        if not callable(getattr(base, "analysis", None)):
            raise TypeError(
                "AmortisedAnalysis(base=...) must be an analysis kernel with analysis(key, "
                "forecast, obs, obs_op, obs_noise) (e.g. filterax.filters.ETKF()); got "
                f"{type(base).__name__}."
            )
        if not callable(network):
            raise TypeError(
                "AmortisedAnalysis(network=...) must be callable as network(forecast, "
                f"base_analysis) -> (N_e, N_x), e.g. an EquivariantEnsembleNet; got "
                f"{type(network).__name__}."
            )
        self.base = base
        self.network = network

    def analysis(
        self,
        key: PRNGKeyArray | None,
        forecast: Float[Array, "N_e N_x"],
        obs: Float[Array, " N_y"],
        obs_op: Any,
        obs_noise: Any,
        **context: Any,
    ) -> fxp.Analysis:
        if isinstance(self.base, fxp.AbstractLocalFilter) and (
            context.get("state_coords") is None or context.get("obs_coords") is None
        ):
            # EnsembleFilter hands the model's geometry only to a kernel that localises
            # itself; the wrapper is not one (its base may or may not be), so the geometry
            # must come through EnsembleFilter(context=...).
            raise ValueError(
                f"AmortisedAnalysis({type(self.base).__name__}(...), ...) localises through its "
                "base, which needs state_coords and obs_coords. Pass them to the driver: "
                "EnsembleFilter(AmortisedAnalysis(...), context=filterax.primitives."
                "geometry_context(model))."
            )
        base = self.base.analysis(key, forecast, obs, obs_op, obs_noise, **context)
        particles = jnp.asarray(base.particles)
        correction = jnp.asarray(self.network(forecast, particles))
        if correction.shape != particles.shape:
            raise ValueError(
                f"AmortisedAnalysis: network(forecast, base_analysis) returned shape "
                f"{correction.shape}; it must return the ({particles.shape[0]}, "
                f"{particles.shape[1]}) correction of the ensemble."
            )
        return fxp.Analysis(
            particles=particles + correction.astype(particles.dtype),
            log_likelihood=base.log_likelihood,
            info=base.info,
        )
