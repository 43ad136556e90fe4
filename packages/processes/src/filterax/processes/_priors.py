"""Constrained priors: Gaussians in an unconstrained space, pushed through invertible maps.

Ensemble Kalman processes assume Gaussian parameters on all of ``R^N_p``. A positive or bounded
physical parameter is therefore represented by an unconstrained ``u`` and the map

- ``x = u`` (no bound),
- ``x = lower + exp(u)`` (bounded below),
- ``x = upper - exp(u)`` (bounded above),
- ``x = lower + (upper - lower) * sigmoid(u)`` (bounded on both sides),

exactly EnsembleKalmanProcesses.jl's ``no_constraint``, ``bounded_below``, ``bounded_above`` and
``bounded``. The ensemble lives in ``u``; the forward model sees ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

import filterax.primitives as fxp

from ._checks import check_noise_entries

__all__ = [
    "ParameterDistribution",
    "combine_distributions",
    "constrained_gaussian",
    "to_constrained",
    "to_unconstrained",
]


def _branches(lower: Array, upper: Array):
    has_lo = jnp.isfinite(lower)
    has_hi = jnp.isfinite(upper)
    both = has_lo & has_hi
    lo_only = has_lo & ~has_hi
    hi_only = ~has_lo & has_hi
    # Safe stand-ins for infinite bounds: every branch is evaluated (jnp.where), and an inf in an
    # unused branch would still poison gradients through the where.
    lo = jnp.where(has_lo, lower, 0.0)
    hi = jnp.where(has_hi, upper, 0.0)
    width = jnp.where(both, hi - lo, 1.0)
    return both, lo_only, hi_only, lo, hi, width


def _to_constrained(u: Array, lower: Array, upper: Array) -> Array:
    both, lo_only, hi_only, lo, hi, width = _branches(lower, upper)
    x_both = lo + width * jax.nn.sigmoid(u)
    u_exp = jnp.where(lo_only | hi_only, u, 0.0)
    x_lo = lo + jnp.exp(u_exp)
    x_hi = hi - jnp.exp(u_exp)
    return jnp.where(both, x_both, jnp.where(lo_only, x_lo, jnp.where(hi_only, x_hi, u)))


def _to_unconstrained(x: Array, lower: Array, upper: Array) -> Array:
    both, lo_only, hi_only, lo, hi, width = _branches(lower, upper)
    z = jnp.where(both, (x - lo) / width, 0.5)
    u_both = jnp.log(z) - jnp.log1p(-z)
    u_lo = jnp.log(jnp.where(lo_only, x - lo, 1.0))
    u_hi = jnp.log(jnp.where(hi_only, hi - x, 1.0))
    return jnp.where(both, u_both, jnp.where(lo_only, u_lo, jnp.where(hi_only, u_hi, x)))


class ParameterDistribution(eqx.Module):
    r"""A prior on ``N_p`` parameters: Gaussian in unconstrained space, with per-component bounds.

    $$u \sim \mathcal{N}(m, C), \qquad x_i = T_i(u_i),$$

    where ``T_i`` is the identity, ``lower_i + exp(u_i)``, ``upper_i - exp(u_i)`` or
    ``lower_i + (upper_i - lower_i) sigmoid(u_i)`` depending on which of ``lower_i``,
    ``upper_i`` are finite. Parameters are grouped in named blocks (``names``, ``sizes``) so a
    flat vector can be converted to and from a ``{name: array}`` dictionary.

    **Arguments:**

    - `mean`: ``m``, the unconstrained mean, shape ``(N_p,)``.
    - `cov`: ``C``, the unconstrained covariance: a ``(N_p, N_p)`` matrix, or a ``(N_p,)`` vector
        of variances.
    - `lower`, `upper`: constrained-space bounds, shape ``(N_p,)`` (or scalars); ``-inf`` /
        ``inf`` for none. Default: unbounded.
    - `names`: one name per block (default ``("theta",)``).
    - `sizes`: the length of each block (default: one block of all ``N_p`` parameters).

    Usually built with `constrained_gaussian` and `combine_distributions`.

    **Reference:** EnsembleKalmanProcesses.jl ``ParameterDistribution`` (``transform_constrained
    _to_unconstrained`` / ``transform_unconstrained_to_constrained``).

    !!! Example

        ```python
        import jax
        from filterax.processes import combine_distributions, constrained_gaussian

        prior = combine_distributions(
            constrained_gaussian(2.0, 1.0, lower=0.0, name="k"),
            constrained_gaussian(0.5, 0.1, lower=0.0, upper=1.0, name="c", repeats=3),
        )
        u = prior.sample(jax.random.key(0), 100)   # (100, 4), unconstrained
        x = prior.to_constrained(u)                # k > 0, 0 < c < 1
        prior.unflatten(x)["c"].shape              # (100, 3)
        ```
    """

    mean: Float[Array, " N_p"]
    cov: Float[Array, "N_p N_p"]
    lower: Float[Array, " N_p"]
    upper: Float[Array, " N_p"]
    names: tuple[str, ...] = eqx.field(static=True)
    sizes: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        mean: Real[ArrayLike, " N_p"] | Sequence[float],
        cov: Real[ArrayLike, "..."] | Sequence[Any],
        lower: Real[ArrayLike, "..."] | Sequence[float] = -jnp.inf,
        upper: Real[ArrayLike, "..."] | Sequence[float] = jnp.inf,
        *,
        names: Sequence[str] | None = None,
        sizes: Sequence[int] | None = None,
    ):
        mean = jnp.asarray(mean)
        if mean.ndim != 1:
            raise ValueError(
                f"ParameterDistribution(mean=...) must be a 1-D vector; got shape {mean.shape}."
            )
        if not jnp.issubdtype(mean.dtype, jnp.floating):
            mean = mean.astype(float)
        (n,) = mean.shape
        values = fxp.concrete_value(mean)
        if values is not None and not np.all(np.isfinite(values)):
            i = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(
                f"ParameterDistribution(mean=...) has a non-finite entry at index {i} "
                f"({values[i]}); pass a finite unconstrained mean."
            )
        cov = jnp.asarray(cov, dtype=mean.dtype)
        # Concrete covariances: finite, variances >= 0, a matrix positive semidefinite (the
        # draws use its eigen square root); a bad one used to give NaN samples.
        check_noise_entries(cov, "ParameterDistribution(cov=...)", semidefinite=True, hint="")
        if cov.ndim == 2 and cov.shape == (n, n):
            fxp.positive_definite_noise(
                cov, n, name="ParameterDistribution(cov=...)", semidefinite=True
            )
        if cov.ndim == 1:
            cov = jnp.diag(cov)
        if cov.shape != (n, n):
            raise ValueError(
                f"ParameterDistribution(cov=...) must be ({n}, {n}) or a ({n},) vector of "
                f"variances; got shape {cov.shape}."
            )
        lower = jnp.broadcast_to(jnp.asarray(lower, dtype=mean.dtype), (n,))
        upper = jnp.broadcast_to(jnp.asarray(upper, dtype=mean.dtype), (n,))
        for bound, name, none in ((lower, "lower", "-inf"), (upper, "upper", "inf")):
            values = fxp.concrete_value(bound)
            if values is not None and np.any(np.isnan(values)):
                i = int(np.flatnonzero(np.isnan(values))[0])
                # A NaN bound used to count as "no bound" (it is not finite).
                raise ValueError(
                    f"ParameterDistribution({name}=...) is NaN at index {i}; pass a number, or "
                    f"{none} for no {name} bound."
                )
        try:
            bad = bool(np.any(np.asarray(lower) >= np.asarray(upper)))
        except Exception:  # traced bounds cannot be checked here
            bad = False
        if bad:
            raise ValueError("ParameterDistribution needs lower < upper for every component.")
        names = ("theta",) if names is None else tuple(names)
        sizes = (n,) if sizes is None else tuple(int(s) for s in sizes)
        if len(names) != len(sizes) or sum(sizes) != n or any(s < 1 for s in sizes):
            raise ValueError(
                f"ParameterDistribution: names {names} and sizes {sizes} must have equal "
                f"length and the sizes must be positive and sum to N_p = {n}."
            )
        if len(set(names)) != len(names):
            raise ValueError(f"ParameterDistribution: block names must be unique; got {names}.")
        self.mean = mean
        self.cov = cov
        self.lower = lower
        self.upper = upper
        self.names = names
        self.sizes = sizes

    @property
    def n_params(self) -> int:
        """``N_p``, the number of (scalar) parameters."""
        return self.mean.shape[0]

    def sample(self, key: PRNGKeyArray, n: int | None = None) -> Float[Array, "..."]:
        """Draw from the prior in UNCONSTRAINED space: shape ``(n, N_p)``, or ``(N_p,)`` if
        ``n`` is None. Push through `to_constrained` for physical values."""
        shape = () if n is None else (int(n),)
        draws = jax.random.multivariate_normal(
            key, self.mean, self.cov, shape, dtype=self.mean.dtype, method="eigh"
        )
        # Concrete means and covariances are checked in __init__; traced ones only here.
        return eqx.error_if(
            draws,
            ~jnp.all(jnp.isfinite(draws)),
            "ParameterDistribution.sample: the draws are not finite; the (traced) mean or "
            "covariance has a NaN/inf entry, or the covariance is not positive semidefinite.",
        )

    def to_constrained(self, u: Any) -> Any:
        """Map unconstrained values to constrained ones.

        `u` is an array whose last axis has length ``N_p`` (any leading batch axes), or a
        dictionary ``{name: (..., size)}`` as returned by `unflatten`; the result has the same
        form.
        """
        if isinstance(u, Mapping):
            return self.unflatten(self.to_constrained(self.flatten(u)))
        u = self._check_last_axis(u, "to_constrained")
        lower, upper = (jnp.broadcast_to(b, u.shape) for b in (self.lower, self.upper))
        return _to_constrained(u, lower, upper)

    def to_unconstrained(self, x: Any) -> Any:
        """Inverse of `to_constrained` (NaN for values outside the bounds)."""
        if isinstance(x, Mapping):
            return self.unflatten(self.to_unconstrained(self.flatten(x)))
        x = self._check_last_axis(x, "to_unconstrained")
        lower, upper = (jnp.broadcast_to(b, x.shape) for b in (self.lower, self.upper))
        return _to_unconstrained(x, lower, upper)

    def unflatten(self, x: Float[ArrayLike, "... N_p"]) -> dict[str, Array]:
        """Split the last axis into the named blocks: ``{name: (..., size)}``."""
        x = self._check_last_axis(x, "unflatten")
        splits = np.cumsum(self.sizes)[:-1].tolist()
        return dict(zip(self.names, jnp.split(x, splits, axis=-1), strict=True))

    def flatten(self, tree: Mapping[str, ArrayLike]) -> Array:
        """Concatenate ``{name: (..., size)}`` blocks (scalars allowed for size-1 blocks)."""
        if set(tree) != set(self.names):
            raise ValueError(
                f"expected a dictionary with keys {self.names}; got keys {tuple(tree)}."
            )
        parts = []
        for name, size in zip(self.names, self.sizes, strict=True):
            leaf = jnp.asarray(tree[name], dtype=self.mean.dtype)
            if leaf.ndim == 0 or leaf.shape[-1] != size:
                if size == 1:
                    leaf = leaf[..., None]
                else:
                    raise ValueError(
                        f"block {name!r} must have trailing dimension {size}; got {leaf.shape}."
                    )
            parts.append(leaf)
        return jnp.concatenate(parts, axis=-1)

    def _check_last_axis(self, x: Any, what: str) -> Array:
        x = jnp.asarray(x)
        if x.ndim == 0 or x.shape[-1] != self.n_params:
            raise ValueError(
                f"ParameterDistribution.{what}: expected an array with last axis N_p = "
                f"{self.n_params}; got shape {x.shape}."
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(self.mean.dtype)
        return x


def to_constrained(prior: ParameterDistribution, u: Any) -> Any:
    """``prior.to_constrained(u)``: unconstrained vectors (or name dictionaries) to physical."""
    return prior.to_constrained(u)


def to_unconstrained(prior: ParameterDistribution, x: Any) -> Any:
    """``prior.to_unconstrained(x)``: physical vectors (or name dictionaries) to unconstrained."""
    return prior.to_unconstrained(x)


# --- constrained_gaussian: moment matching ----------------------------------------------------

# Trapezoidal rule in z ~ N(0, 1) over [-12, 12]: the integrand sigmoid(mu + sigma z) phi(z) is
# smooth and decays like phi, so the rule converges spectrally; 4001 nodes give ~1e-14 moments
# for sigma up to ~20.
_Z = np.linspace(-12.0, 12.0, 4001)
_W = np.exp(-0.5 * _Z**2) * (_Z[1] - _Z[0]) / math.sqrt(2.0 * math.pi)


def _logitnormal_moments(mu: float, sigma: float):
    """Mean, std of sigmoid(N(mu, sigma^2)) and their derivatives w.r.t. (mu, log sigma)."""
    p = 1.0 / (1.0 + np.exp(-(mu + sigma * _Z)))
    dp = p * (1.0 - p)
    m = _W @ p
    e2 = _W @ p**2
    v = max(e2 - m**2, 1e-300)
    s = math.sqrt(v)
    dm = np.array([_W @ dp, sigma * (_W @ (dp * _Z))])
    de2 = np.array([_W @ (2 * p * dp), sigma * (_W @ (2 * p * dp * _Z))])
    ds = (de2 - 2 * m * dm) / (2 * s)
    return m, s, np.stack([dm, ds])


def _solve_logitnormal(m_target: float, s_target: float) -> tuple[float, float]:
    """(mu, sigma) with mean/std of sigmoid(N(mu, sigma^2)) equal to the targets (in (0, 1))."""
    mu = math.log(m_target) - math.log1p(-m_target)
    # Delta method: std(sigmoid(U)) ~ sigmoid'(mu) sigma.
    log_sigma = math.log(s_target / (m_target * (1.0 - m_target)))
    target = np.array([m_target, s_target])
    m, s, jac = _logitnormal_moments(mu, math.exp(log_sigma))
    res = np.array([m, s]) - target
    for _ in range(200):
        if np.max(np.abs(res) / target) < 1e-12:
            break
        step = np.linalg.solve(jac, -res)
        alpha = 1.0
        while alpha > 1e-8:
            mu_new, ls_new = mu + alpha * step[0], log_sigma + alpha * step[1]
            m_n, s_n, jac_n = _logitnormal_moments(mu_new, math.exp(ls_new))
            res_n = np.array([m_n, s_n]) - target
            if np.linalg.norm(res_n) < np.linalg.norm(res):
                break
            alpha /= 2
        mu, log_sigma, res, jac = mu_new, ls_new, res_n, jac_n
    if np.max(np.abs(res) / target) > 1e-8:
        raise ValueError(
            "constrained_gaussian: could not match the requested mean and std with a logit-"
            f"normal (residual {res}); the std is too large for the bounds. Pass a smaller std."
        )
    return mu, math.exp(log_sigma)


def constrained_gaussian(
    mean: float,
    std: float,
    lower: float = -math.inf,
    upper: float = math.inf,
    *,
    name: str = "theta",
    repeats: int = 1,
    dtype: Any = None,
) -> ParameterDistribution:
    r"""A Gaussian in unconstrained space whose constrained-space mean and std are given.

    With ``X = T(U)``, ``U ~ N(mu, sigma^2)`` (``T`` chosen by the bounds, see
    `ParameterDistribution`), ``(mu, sigma)`` solve ``E[X] = mean``, ``std[X] = std``:

    - no bounds: ``mu = mean``, ``sigma = std``;
    - one bound (log-normal): ``sigma^2 = log(1 + std^2 / d^2)``, ``mu = log d - sigma^2 / 2``
      with ``d = mean - lower`` (or ``upper - mean``), in closed form;
    - two bounds (logit-normal): solved numerically (Newton on quadrature moments, to 1e-12
      relative); needs ``std^2 < (mean - lower)(upper - mean)``, the largest variance any
      distribution on ``[lower, upper]`` with that mean can have.

    Computed eagerly in NumPy: the arguments must be concrete numbers.

    **Arguments:**

    - `mean`, `std`: constrained-space mean (strictly inside the bounds) and std (> 0).
    - `lower`, `upper`: the bounds (default unbounded).
    - `name`: the block name (used by `unflatten` and `combine_distributions`).
    - `repeats`: number of i.i.d. copies (a block of ``repeats`` parameters).
    - `dtype`: floating dtype of the arrays (default: JAX's default float).

    **Returns:** a `ParameterDistribution` with one block of ``repeats`` parameters.

    **Reference:** EnsembleKalmanProcesses.jl ``constrained_gaussian(name, μ, σ, lb, ub;
    repeats)``, which solves the two-bound case with Optim.jl instead of Newton.

    !!! Example

        ```python
        from filterax.processes import constrained_gaussian

        prior = constrained_gaussian(0.3, 0.1, lower=0.0, upper=1.0, name="albedo")
        ```
    """
    try:
        mean, std, lower, upper = float(mean), float(std), float(lower), float(upper)
    except jax.errors.ConcretizationTypeError as err:
        raise TypeError(
            "constrained_gaussian(mean, std, lower, upper) needs concrete numbers: it solves for "
            "the unconstrained Gaussian eagerly in NumPy, so it cannot run under jit, vmap or "
            "grad. Build the prior outside the traced function and pass it in (a "
            "ParameterDistribution is a pytree)."
        ) from err
    if not (std > 0 and math.isfinite(std)):
        raise ValueError(f"constrained_gaussian(std=...) must be positive and finite; got {std}.")
    if not (lower < mean < upper):
        raise ValueError(
            f"constrained_gaussian: the mean {mean} must lie strictly inside the bounds "
            f"({lower}, {upper})."
        )
    if int(repeats) < 1:
        raise ValueError(f"constrained_gaussian(repeats=...) must be >= 1; got {repeats}.")
    has_lo, has_hi = math.isfinite(lower), math.isfinite(upper)
    if has_lo and has_hi:
        width = upper - lower
        m01, s01 = (mean - lower) / width, std / width
        if s01**2 >= m01 * (1.0 - m01):
            raise ValueError(
                f"constrained_gaussian: std {std} is too large for mean {mean} in ({lower}, "
                f"{upper}); any distribution on the interval with that mean has std < "
                f"{width * math.sqrt(m01 * (1 - m01)):.6g}."
            )
        mu, sigma = _solve_logitnormal(m01, s01)
    elif has_lo or has_hi:
        d = mean - lower if has_lo else upper - mean
        var = math.log1p((std / d) ** 2)
        mu, sigma = math.log(d) - var / 2.0, math.sqrt(var)
    else:
        mu, sigma = mean, std
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    r = int(repeats)
    return ParameterDistribution(
        jnp.full((r,), mu, dtype=dtype),
        jnp.full((r,), sigma**2, dtype=dtype),
        jnp.full((r,), lower, dtype=dtype),
        jnp.full((r,), upper, dtype=dtype),
        names=(name,),
        sizes=(r,),
    )


def combine_distributions(*distributions: ParameterDistribution) -> ParameterDistribution:
    """Stack independent `ParameterDistribution` blocks into one (block-diagonal covariance).

    **Arguments:**

    - `distributions`: the blocks, in order; their names must be unique.

    **Returns:** a `ParameterDistribution` over the concatenated parameter vector.

    **Reference:** EnsembleKalmanProcesses.jl ``combine_distributions``.
    """
    if len(distributions) == 1 and isinstance(distributions[0], list | tuple):
        distributions = tuple(distributions[0])
    if not distributions or not all(isinstance(d, ParameterDistribution) for d in distributions):
        raise TypeError("combine_distributions expects one or more ParameterDistribution objects.")
    dtype = jnp.result_type(*(d.mean.dtype for d in distributions))
    n = sum(d.n_params for d in distributions)
    cov = jnp.zeros((n, n), dtype=dtype)
    start = 0
    for d in distributions:
        stop = start + d.n_params
        cov = cov.at[start:stop, start:stop].set(d.cov)
        start = stop
    return ParameterDistribution(
        jnp.concatenate([d.mean for d in distributions]).astype(dtype),
        cov,
        jnp.concatenate([d.lower for d in distributions]).astype(dtype),
        jnp.concatenate([d.upper for d in distributions]).astype(dtype),
        names=sum((d.names for d in distributions), ()),
        sizes=sum((d.sizes for d in distributions), ()),
    )
