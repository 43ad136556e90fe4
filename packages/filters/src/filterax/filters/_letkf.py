r"""The local ensemble transform Kalman filter (Hunt, Kostelich & Szunyogh 2007)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

import filterax.primitives as fxp
from filterax.primitives import matmul, symmetric_matrix_function

from ._common import prepare_analysis, require_diagonal_noise
from ._local import SELECTION_MODES, ObsSelector, safe_sqrt
from ._sharding import map_over_grid, mesh_axes

__all__ = ["LETKF", "LETKFInfo", "letkf_local_update"]

_CONTEXT_KEYS = ("state_coords", "obs_coords", "distance", "local_obs_indices")
_TRANSFORM_METHODS = ("newton", "eigh")


def letkf_local_update(
    anomaly: Float[Array, " N_e"],
    mean: Float[Array, ""],
    S: Float[Array, "N_e L"],
    delta: Float[Array, " L"],
    method: str = "newton",
) -> Float[Array, " N_e"]:
    r"""The ETKF analysis of ONE state component from its local (tapered) observations.

    With ``a = X'_{:, i}`` and the local, localised ``S`` and ``delta`` (columns and entries
    already multiplied by ``sqrt(rho)``):

    $$x^a_{:, i} = \bar x_i + \frac{w^\top a}{\sqrt{N_e - 1}} + T a, \qquad
    T = (I + S S^\top)^{-1/2}, \qquad w = (I + S S^\top)^{-1} S \delta .$$

    Only ``T a`` and ``w^T a`` are needed, never ``T`` itself. With ``L < N_e`` local
    observations everything is done on the ``L x L`` Gram matrix ``G = S^T S``:

    $$T a = a + S\, g(G)\, S^\top a,\qquad w^\top a = \delta^\top (I + G)^{-1} S^\top a,$$

    (``g(l) = ((1 + l)^{-1/2} - 1)/l``, the push-through identity); otherwise on the
    ``N_e x N_e`` matrix ``S S^T``. Both use the gradient-safe spectral function
    `filterax.primitives.symmetric_matrix_function` (finite derivatives at repeated
    eigenvalues, which tapering to zero creates).
    The choice is static (``L`` is a shape). On the ``N_e x N_e`` path ``T`` is computed by a
    coupled Newton–Schulz iteration (`method="newton"`, the default: batched matmuls, several
    times faster on CPU than a batched LAPACK `eigh` of small matrices) or by `eigh`
    (`method="eigh"`); both agree to round-off and share the same eigh-based derivative.

    **Arguments:**

    - `anomaly`: the forecast anomalies of this component, ``(N_e,)`` (unnormalised).
    - `mean`: the forecast mean of this component (scalar).
    - `S`: ``sqrt(rho) * Y'_{:, local} R_local^{-1/2} / sqrt(N_e - 1)``, ``(N_e, L)``.
    - `delta`: ``sqrt(rho) * R_local^{-1/2} d_local``, ``(L,)``.
    - `method`: ``"newton"`` or ``"eigh"`` (static), the ``N_e x N_e`` path's algorithm.

    **Returns:** the ``(N_e,)`` analysis members of this component.

    **Reference:** Hunt, Kostelich & Szunyogh (2007), *Physica D* 230, §2.3 and eqs. (20)–(25);
    DAPPER ``local_analyses`` (``EnKF_analysis(Eii, Yl * tpr, R=I, dyl * tpr, "Sqrt")``).
    """
    n_e, n_local = S.shape
    dtype = S.dtype
    if n_local < n_e:
        gram = matmul(S.T, S)
        u = matmul(S.T, anomaly)
        core = symmetric_matrix_function(gram, "inv_sqrt_one_plus_push")
        transformed = anomaly + matmul(S, matmul(core, u))
        # (I + G)^{-1} = F^2 with F = (I + G)^{-1/2} = I + G g(G): reuse the one eigh. (A
        # separate batched Cholesky would also be independent of it, and two concurrent
        # batched LAPACK calls can deadlock JAX's CPU thread pool for batches >~ 3e4.)
        inv_sqrt = jnp.eye(n_local, dtype=dtype) + matmul(gram, core)
        mean_weight = jnp.dot(delta, matmul(inv_sqrt, matmul(inv_sqrt, u)))
    else:
        transform = symmetric_matrix_function(matmul(S, S.T), "inv_sqrt_one_plus", method)
        transformed = matmul(transform, anomaly)
        # w^T a = (S delta)^T T^2 a (T symmetric): reuses T a.
        mean_weight = jnp.dot(matmul(S, delta), matmul(transform, transformed))
    return mean + mean_weight / math.sqrt(n_e - 1) + transformed


class LETKFInfo(eqx.Module):
    r"""Diagnostics returned (as ``Analysis.info``) by `LETKF`.

    **Fields:**

    - `innovation`: ``d = y - mean H(X^f)`` (0 at missing entries).
    - `n_obs`: the number of observed (non-NaN) entries.
    - `n_local_obs`: per grid point, the number of observations with positive weight
        (``rho > cutoff``), ``(N_x,)``.
    - `n_truncated`: the number of grid points whose ``max_local_obs`` candidates were all
        used and the farthest still had ``rho > cutoff``: their selection may have dropped
        observations inside the taper's support (raise ``max_local_obs`` if non-zero). Always
        0 when every observation is a candidate or a neighbour table is given.
    """

    innovation: Float[Array, " N_y"]
    n_obs: Int[Array, ""]
    n_local_obs: Int[Array, " N_x"]
    n_truncated: Int[Array, ""]


def _coordinates(value: Any, name: str, size: int, what: str) -> Array:
    if value is None:
        raise ValueError(
            f"LETKF.analysis needs `{name}`, the coordinates of the {what}, passed as a keyword "
            f"(context) argument: filt.analysis(key, X, y, obs_op, R, state_coords=(N_x, D), "
            "obs_coords=(N_y, D)); run(EnsembleFilter(LETKF(...)), model, ...) takes them from "
            "the model (state_coords=, obs_coords=); with assimilate, context={'state_coords': "
            "..., 'obs_coords': ...}."
        )
    shape = jnp.shape(value)
    if len(shape) == 1:
        value = jnp.reshape(jnp.asarray(value), (-1, 1))
        shape = value.shape
    if len(shape) != 2 or shape[0] != size:
        raise ValueError(
            f"LETKF.analysis: `{name}` must have shape ({size}, D) (or ({size},) for a 1-D "
            f"domain), one row per {what[:-1] if what.endswith('s') else what}; got shape "
            f"{jnp.shape(value)}."
        )
    dtype = jnp.result_type(value)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise TypeError(f"LETKF.analysis: `{name}` must be real numbers; got dtype {dtype}.")
    # A NaN coordinate silently changed which observations are local. Concrete coordinates
    # are checked here; traced ones make the analysis NaN (`_finite_coordinates`), which the
    # driver reports as a failed cycle -- a run-time error here would be a host callback in
    # every compiled cycle.
    return fxp.check_parameter(
        jnp.asarray(value),
        f"LETKF.analysis: `{name}`",
        allow_inf=False,
        hint="Every grid point and observation needs finite coordinates; to leave an "
        "observation out, put NaN in its entry of the observations instead.",
        traced=False,
    )


def _finite_coordinates(*coords: Array) -> Array | None:
    """``None`` when every coordinate array is concrete (checked by `_coordinates`), else a
    traced flag: all of them finite."""
    traced = [c for c in coords if fxp.concrete_value(c) is None]
    if not traced:
        return None
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(c)) for c in traced]))


class LETKF(fxp.AbstractLocalFilter):
    r"""Local ensemble transform Kalman filter with R-localisation (Hunt et al. 2007).

    Every state component ``i`` (grid point) gets its own ETKF analysis from the observations
    near it, each weighted by a taper ``rho_ij = taper(dist(x_i, y_j), radius)``. Following
    DAPPER, the taper enters as ``sqrt(rho)`` on the whitened observed anomalies and innovation
    — equivalently the local ``R^{-1}`` is multiplied by ``rho`` (R-localisation):

    $$S^{(i)} = \big[\sqrt{\rho_{ij}}\, S_{:, j}\big]_{j \in \mathcal L_i},\quad
    \delta^{(i)} = \big[\sqrt{\rho_{ij}}\, \delta_j\big]_{j \in \mathcal L_i},\quad
    x^a_{:, i} = \bar x_i + \frac{(w^{(i)})^\top X'_{:, i}}{\sqrt{N_e-1}} + T^{(i)} X'_{:, i},$$

    with ``S = Y' R^{-1/2}/sqrt(N_e - 1)``, ``delta = R^{-1/2} d`` and ``T^{(i)}, w^{(i)}`` the
    ETKF transform and weights of ``(S^{(i)}, delta^{(i)})`` (`letkf_local_update`). The local
    set ``L_i`` is cut hard where ``rho <= cutoff`` (default: outside the taper's support, which
    for Gaspari–Cohn is ``dist > 2 radius``) and, if `max_local_obs` is given, limited to that
    many nearest observations. With ``radius = inf`` (``rho = 1``) and all observations local,
    every local analysis is the global ETKF, so the LETKF equals `ETKF`.

    **Scale.** The per-point analyses are vmapped; `chunk_size` batches them with
    ``lax.map(..., batch_size=chunk_size)`` so peak memory is one chunk's, whatever ``N_x``.
    With ``L < N_e`` local observations the transform is computed on the ``L x L`` Gram matrix
    (``O(N_e L^2 + L^3)`` per point), else on ``N_e x N_e`` by Newton–Schulz (see
    `transform_method`; batched LAPACK `eigh` costs ~10 us per small matrix on CPU).
    Candidate selection (see `filterax.filters._local`): a neighbour table (context
    ``local_obs_indices``, ``(N_x, L)``, ``-1`` pads) or 1-D coordinates
    (``jnp.searchsorted`` windows, periodic or not) cost ``O(N_x L)``; otherwise ``top_k``
    over all distances. A `mesh` splits the grid points over devices with `jax.shard_map` (no
    communication inside the analysis).

    **Arguments:**

    - `radius`: the taper length scale, a dynamic field (sweep it with `jax.vmap`, differentiate
        it with `jax.grad`). For the default `gaspari_cohn` it is the **GC half-width** ``c``
        (weights vanish beyond ``2c``); DAPPER's ``loc_rad`` converts as
        ``radius = 1.82 * loc_rad`` (`fxp.dapper_radius_to_gc_halfwidth`), e.g. DAPPER's
        Lorenz-96 ``loc_rad=4`` is ``radius=7.28``. ``jnp.inf`` disables localisation.
    - `taper`: ``taper(d, radius) -> weights`` (static), default `fxp.gaspari_cohn`; e.g.
        `fxp.gaussian_taper` (then `radius` is DAPPER's ``loc_rad`` itself).
    - `distance`: single-pair distance (static), e.g. `fxp.PeriodicDistance(40.0)` on the
        Lorenz-96 ring, `fxp.haversine` for (lat, lon) in degrees. ``None`` (default): the
        model's distance — the ``distance`` context keyword, which `EnsembleFilter` fills
        from `AbstractModel.distance` — else `fxp.euclidean`. Given explicitly, it overrides
        the model's.
    - `cutoff`: observations with ``rho <= cutoff`` are excluded (static float, default 0:
        exactly the taper's support; DAPPER uses ``1e-3``, needed for tapers without compact
        support).
    - `max_local_obs`: the static number ``L`` of candidate observations per point (``None``:
        all ``N_y``). Choose it to cover the support (``n_truncated`` reports if it does not).
    - `chunk_size`: grid points per vmapped chunk (static; ``None``: all at once).
    - `selection`: ``"auto"`` (1-D window, else top-k), ``"all"``, ``"window"`` or ``"topk"``
        (static). A neighbour table passed as context is always used when given.
    - `mesh`, `mesh_axis`: a `jax.sharding.Mesh` to split the grid over (static; ``None`` runs
        on one device) and the axis name(s) to use (``None``: all axes).
    - `transform_method`: how the ``N_e x N_e`` transforms (``L >= N_e``) are computed
        (static): ``"newton"`` (default; a coupled Newton–Schulz iteration to round-off, batched
        matmuls only, ~5x faster than ``"eigh"`` on CPU for small ``N_e``) or ``"eigh"``
        (batched LAPACK eigendecompositions). Same values to round-off, same (eigh-based,
        finite at repeated eigenvalues) derivatives. The ``L < N_e`` Gram path always uses
        ``eigh`` of the ``L x L`` matrix.

    `analysis(key, forecast, obs, obs_op, obs_noise, *, state_coords, obs_coords,
    distance=None, local_obs_indices=None)`: the geometry is keyword context (``(N_x, D)`` and
    ``(N_y, D)``, or 1-D arrays for ``D = 1``; see `fxp.AbstractLocalFilter`). Run as a cycled
    method (``run(EnsembleFilter(LETKF(...)), model, ...)``) it is taken from the model
    (`AbstractModel.state_coords`, `obs_coords`, `distance`; the `filterax.zoo` presets carry
    them), with `EnsembleFilter(context=...)` entries overriding the model's. `key` is unused.
    ``R`` must be diagonal (the localisation weights individual observation errors); NaN
    observations get zero weight.

    **Returns** (of `analysis`): `fxp.Analysis(particles, log_likelihood, info)` with the
    *global* ``log_likelihood = log N(d; 0, C^HH + R)`` of the forecast and ``info`` a
    `LETKFInfo`.

    **Reference:** Hunt, Kostelich & Szunyogh (2007), *Efficient data assimilation for
    spatiotemporal chaos: a local ensemble transform Kalman filter*, Physica D 230; Ott et al.
    (2004), Tellus A 56; Sakov & Bertino (2011), Comput. Geosci. 15 (R- vs B-localisation).
    DAPPER: ``LETKF(N, loc_rad, taper="GC")`` (``local_analyses``, one grid point per batch).

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        import filterax.filters as ff
        import filterax.primitives as fxp
        from filterax.zoo import presets

        # Cycled: the Lorenz-96 preset carries its grid and periodic distance.
        ssm = presets.lorenz96_sakov2008()
        xp = ssm.simulate(jax.random.key(0), 200)
        filt = ff.LETKF(radius=fxp.dapper_radius_to_gc_halfwidth(4.0))
        method = ff.EnsembleFilter(filt, inflator=fxp.MultiplicativeInflator(1.04))
        out = ff.run(method, ssm, ssm.initial_ensemble(jax.random.key(1), 10),
                     xp.observations, xp.times, key=jax.random.key(2))

        # One analysis: the geometry is keyword context.
        grid = jnp.arange(40.0)
        X = jax.random.normal(jax.random.key(0), (10, 40))
        a = filt.analysis(None, X, jnp.zeros(40), fxp.IdentityObs(), 1.0, state_coords=grid,
                          obs_coords=grid, distance=fxp.PeriodicDistance(40.0))
        ```
    """

    radius: Float[ArrayLike, ""] = eqx.field(
        converter=fxp.parameter_converter(
            "LETKF(radius=...)",
            low=0.0,
            low_open=True,
            hint="It is the Gaspari-Cohn half-width (jnp.inf for no localisation); DAPPER's "
            "loc_rad converts as 1.82 * loc_rad.",
        )
    )
    taper: Callable[..., Array] = eqx.field(static=True, default=fxp.gaspari_cohn)
    distance: Callable[..., Array] | None = eqx.field(static=True, default=None)
    cutoff: float = eqx.field(static=True, default=0.0)
    max_local_obs: int | None = eqx.field(static=True, default=None)
    chunk_size: int | None = eqx.field(static=True, default=None)
    selection: str = eqx.field(static=True, default="auto")
    mesh: Mesh | None = eqx.field(static=True, default=None)
    mesh_axis: str | tuple[str, ...] | None = eqx.field(static=True, default=None)
    transform_method: str = eqx.field(static=True, default="newton")

    def __check_init__(self) -> None:
        if jnp.ndim(self.radius) != 0:
            raise ValueError(
                f"LETKF(radius=...) must be a scalar; got shape {jnp.shape(self.radius)}. "
                "To sweep radii, jax.vmap over LETKF instances (eqx.filter_vmap)."
            )
        if not callable(self.taper) or not (self.distance is None or callable(self.distance)):
            raise TypeError(
                "LETKF: `taper` must be a callable and `distance` a callable or None (the "
                "model's distance)."
            )
        if not isinstance(self.cutoff, int | float) or not 0.0 <= self.cutoff < 1.0:
            raise ValueError(
                f"LETKF(cutoff=...) must be a float in [0, 1) (a taper-weight threshold); got "
                f"{self.cutoff!r}."
            )
        for name in ("max_local_obs", "chunk_size"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ValueError(
                    f"LETKF({name}=...) must be a positive Python int or None; got {value!r}."
                )
        if self.selection not in SELECTION_MODES:
            raise ValueError(
                f"LETKF(selection=...) must be one of {SELECTION_MODES}; got {self.selection!r}."
            )
        if self.transform_method not in _TRANSFORM_METHODS:
            raise ValueError(
                f"LETKF(transform_method=...) must be one of {_TRANSFORM_METHODS}; got "
                f"{self.transform_method!r}."
            )
        if self.mesh is not None:
            if not isinstance(self.mesh, Mesh):
                raise TypeError(
                    f"LETKF(mesh=...) must be a jax.sharding.Mesh or None; got "
                    f"{type(self.mesh).__name__}."
                )
            mesh_axes(self.mesh, self.mesh_axis, "LETKF")

    def analysis(
        self,
        key: PRNGKeyArray | None,
        forecast: Float[ArrayLike, "N_e N_x"],
        obs: Float[ArrayLike, " N_y"],
        obs_op: Any,
        obs_noise: Any,
        **context: Any,
    ) -> fxp.Analysis:
        """Assimilate `obs` with one local ETKF per grid point (see the class docstring)."""
        del key
        unknown = sorted(set(context) - set(_CONTEXT_KEYS))
        if unknown:
            raise ValueError(
                f"LETKF.analysis got unexpected context {unknown}; it accepts "
                f"{list(_CONTEXT_KEYS)}."
            )
        inputs = prepare_analysis(forecast, obs, obs_op, obs_noise, name="LETKF.analysis")
        require_diagonal_noise(
            inputs,
            "LETKF",
            "ETKF, EnSRF, ESTKF, EnKF_N or StochasticEnKF (global analyses)",
        )
        dtype = inputs.dtype
        n_x, n_y = inputs.n_state, inputs.n_obs_total
        state_coords = _coordinates(context.get("state_coords"), "state_coords", n_x, "grid points")
        obs_coords = _coordinates(context.get("obs_coords"), "obs_coords", n_y, "observations")
        if state_coords.shape[1] != obs_coords.shape[1]:
            raise ValueError(
                f"LETKF.analysis: state_coords has D={state_coords.shape[1]} columns but "
                f"obs_coords has D={obs_coords.shape[1]}; both must use the same coordinates."
            )
        table = context.get("local_obs_indices")
        if table is not None:
            table = jnp.asarray(table)
            if table.ndim != 2 or table.shape[0] != n_x:
                raise ValueError(
                    f"LETKF.analysis: local_obs_indices must be an integer (N_x, L) = ({n_x}, L) "
                    f"table of observation indices (-1 for none); got shape {table.shape}."
                )
            if not jnp.issubdtype(table.dtype, jnp.integer):
                raise TypeError(
                    "LETKF.analysis: local_obs_indices must hold integer observation indices; "
                    f"got dtype {table.dtype}."
                )
            if self.max_local_obs is not None and self.max_local_obs != table.shape[1]:
                raise ValueError(
                    f"LETKF.analysis: local_obs_indices has L={table.shape[1]} columns but "
                    f"max_local_obs={self.max_local_obs}; pass max_local_obs=None or "
                    f"{table.shape[1]}."
                )

        # Explicit LETKF(distance=...) > the context's (the model's, via EnsembleFilter) >
        # Euclidean.
        distance = self.distance if self.distance is not None else context.get("distance")
        if distance is None:
            distance = fxp.euclidean
        elif not callable(distance):
            raise TypeError(
                "LETKF.analysis: the `distance` context must be a single-pair distance(a, b) "
                f"-> scalar (e.g. fxp.PeriodicDistance(40.0)) or None; got "
                f"{type(distance).__name__}."
            )
        coord_dtype = jnp.result_type(dtype, state_coords.dtype, obs_coords.dtype)
        selector = ObsSelector.build(
            self.selection,
            self.max_local_obs,
            distance,
            obs_coords.astype(coord_dtype),
            inputs.mask,
            table,
        )
        per_point = {
            "coord": state_coords.astype(coord_dtype),
            "anomaly": inputs.anomalies.T,
            "mean": inputs.forecast_mean,
        }
        if table is not None:
            per_point["table"] = table
        shared = {
            "selector": selector,
            "S": inputs.whitened_anomalies,
            "delta": inputs.whitened_innovation,
            "radius": jnp.asarray(self.radius, dtype=dtype),
        }
        taper, cutoff, method = self.taper, self.cutoff, self.transform_method
        may_truncate = selector.mode in ("window", "topk")

        def point_fn(point: dict, common: dict) -> tuple[Array, Array, Array]:
            sel = common["selector"]
            indices, dist, valid = sel.select(point["coord"], point.get("table"))
            # the radius was checked when the filter was built (its field's converter)
            with fxp.assume_checked():
                rho = taper(dist, common["radius"]).astype(dtype)
            keep = valid & (rho > cutoff)
            rho = jnp.where(keep, rho, jnp.zeros((), dtype))
            scale = safe_sqrt(rho)
            if sel.mode == "all":  # indices == arange(N_y): skip the gather
                S_local = common["S"] * scale[None, :]
                delta_local = common["delta"] * scale
            else:
                S_local = common["S"][:, indices] * scale[None, :]
                delta_local = common["delta"][indices] * scale
            members = letkf_local_update(
                point["anomaly"], point["mean"], S_local, delta_local, method
            )
            n_local = jnp.sum(keep)
            if may_truncate:
                # All L candidates observed and the farthest still weighted: maybe cut short.
                farthest = lax.stop_gradient(jnp.max(jnp.where(valid, dist, 0.0)))
                with fxp.assume_checked():
                    edge = taper(farthest, lax.stop_gradient(common["radius"])) > cutoff
                truncated = jnp.all(valid) & edge
            else:
                truncated = jnp.zeros((), bool)
            return members, n_local, truncated

        axes = () if self.mesh is None else mesh_axes(self.mesh, self.mesh_axis, "LETKF")
        members, n_local, truncated = map_over_grid(
            point_fn, per_point, shared, chunk_size=self.chunk_size, mesh=self.mesh, axes=axes
        )
        info = LETKFInfo(
            innovation=inputs.innovation,
            n_obs=inputs.n_obs,
            n_local_obs=n_local.astype(jnp.int32),
            n_truncated=jnp.sum(truncated).astype(jnp.int32),
        )
        particles, log_likelihood = members.T, inputs.log_likelihood
        finite = _finite_coordinates(state_coords, obs_coords)
        if finite is not None:  # traced coordinates with a NaN/inf: a NaN analysis, not a
            # silently different set of local observations
            particles = jnp.where(finite, particles, jnp.nan)
            log_likelihood = jnp.where(finite, log_likelihood, jnp.nan)
        return fxp.Analysis(particles, log_likelihood, info)
