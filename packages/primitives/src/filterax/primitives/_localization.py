"""Covariance localisation: taper matrices, Schur products, localiser modules, adaptive weights.

Tutorial 1.E / 6.A. A localiser turns distances between two sets of locations into an
``(n, m)`` matrix of weights that multiplies a covariance elementwise (B-localisation) or, as
the square root of the weights, the whitened observation anomalies of a local analysis
(R-localisation, DAPPER's LETKF convention). The localiser modules carry their length scale as
an ordinary (dynamic) field so ``jax.grad`` and ``jax.vmap`` reach it, and their distance as a
static callable, e.g. ``functools.partial(periodic, period=40)`` for Lorenz-96.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, Float, Real, ScalarLike

from ._distances import euclidean, pairwise_distances
from ._tapers import gaspari_cohn, gaussian_taper, hard_cutoff, soar_taper
from ._validation import check_ensemble, check_same_members, parameter_converter

__all__ = [
    "AbstractLocalizer",
    "GaspariCohnLocalizer",
    "GaussianLocalizer",
    "HardCutoffLocalizer",
    "SOARLocalizer",
    "adaptive_localization",
    "localization_matrix",
    "localize",
]


def localization_matrix(
    coords_a: Real[ArrayLike, " n *D"],
    coords_b: Real[ArrayLike, " m *D"],
    radius: ScalarLike,
    taper: Callable[[Array, Any], Array] = gaspari_cohn,
    distance: Callable[..., Array] = euclidean,
) -> Float[Array, "n m"]:
    """Matrix of localisation weights between two sets of locations.

    $L_{ij} = \\rho(d(a_i, b_j); r)$ for a taper $\\rho$ and a single-pair distance $d$.

    **Arguments:**

    - `coords_a`: `(n, D)` locations (e.g. state grid points; `(n,)` for 1-D grids).
    - `coords_b`: `(m, D)` locations (e.g. observation sites).
    - `radius`: the taper length scale (for `gaspari_cohn` the half-width $c$, support $2c$).
    - `taper`: `taper(d, radius) -> weights`, e.g. `gaspari_cohn`, `gaussian_taper`.
    - `distance`: `distance(a, b) -> scalar`, e.g. `euclidean` or
      `functools.partial(periodic, period=40.0)`.

    **Returns:**

    The `(n, m)` weight matrix.

    DAPPER equivalent: `dist2coeff(pairwise_distances(A, B), loc_rad, tag)`.

    **Example:**

    ```python
    x = jnp.arange(40.0)
    L = localization_matrix(x, x, 7.28, distance=functools.partial(periodic, period=40.0))
    ```
    """
    return taper(pairwise_distances(coords_a, coords_b, distance), radius)


def localize(
    cov: Float[Array, "n m"] | lx.AbstractLinearOperator,
    taper_matrix: Float[ArrayLike, "n m"],
    *,
    densify: bool = False,
) -> Float[Array, "n m"]:
    """Schur (elementwise) product of a covariance with a taper matrix.

    $C_{\\text{loc}} = L \\circ C$. With a positive-definite taper (Gaspari-Cohn, Gaussian,
    SOAR) and a positive semi-definite $C$ the result is positive semi-definite (Schur product
    theorem) and, unlike an ensemble covariance, generally of full rank.

    A lineax operator (e.g. a low-rank ensemble covariance $X'^\\top X' / (N_e - 1)$) is only
    materialised when `densify=True` is passed: the product with a taper destroys the low-rank
    structure and costs $O(n m)$ memory, which should be a deliberate choice. For large grids,
    localise in observation space or use R-localisation (`AbstractLocalizer.matrix` weights
    applied to the obs anomalies) instead.

    **Arguments:**

    - `cov`: an `(n, m)` covariance (state-state, state-obs or obs-obs), or a lineax operator.
    - `taper_matrix`: the `(n, m)` weights (`localization_matrix`, `AbstractLocalizer.matrix`).
    - `densify`: allow materialising a lineax operator `cov`.

    **Returns:**

    The dense `(n, m)` localised covariance.

    Reference: Houtekamer & Mitchell (2001), MWR 129, 123-137; Hamill, Whitaker & Snyder
    (2001), MWR 129, 2776-2790. DAPPER equivalent: `C * dist2coeff(...)` in `EnKF` with
    `loc_rad` set (B-localisation).

    **Example:**

    ```python
    P = jnp.cov(X, rowvar=False)  # (N_x, N_x) from a (N_e, N_x) ensemble
    P_loc = localize(P, localization_matrix(grid, grid, 7.28))
    ```
    """
    if isinstance(cov, lx.AbstractLinearOperator):
        if not densify:
            raise TypeError(
                "localize got a lineax operator; the Schur product needs the dense matrix. "
                "Pass densify=True to materialise it (O(n m) memory), or pass a dense array."
            )
        cov = cov.as_matrix()
    cov = jnp.asarray(cov)
    taper_matrix = jnp.asarray(taper_matrix)
    if cov.ndim != 2 or cov.shape != taper_matrix.shape:
        raise ValueError(
            f"localize needs a 2-D covariance and a taper matrix of the same shape; got "
            f"{cov.shape} and {taper_matrix.shape}. Build the taper with "
            "localization_matrix(coords_rows, coords_cols, radius)."
        )
    return cov * taper_matrix


def adaptive_localization(
    X: Float[Array, "N_e N_x"],
    Y: Float[Array, "N_e N_y"],
    *,
    n_groups: int = 4,
) -> Float[Array, "N_x N_y"]:
    """Anderson (2007) hierarchical-ensemble-filter localisation weights.

    The ensemble is split into $M$ = `n_groups` equal groups of consecutive members. In group
    $j$ the regression coefficient of state variable $i$ on observed variable $k$ is
    $\\beta^j_{ik} = \\sum_n x'_{ni} y'_{nk} / \\sum_n y'^2_{nk}$ (anomalies w.r.t. the group
    mean). The weight that minimises the expected squared error of the regression when the
    $M$ estimates are exchangeable samples is (Anderson 2007; DART's `comp_reg_factor`)

    $$\\alpha_{ik} = \\max\\Big(0,\\ \\frac{1}{M-1}\\Big[\\frac{(\\sum_j \\beta^j_{ik})^2}
    {\\sum_j (\\beta^j_{ik})^2} - 1\\Big]\\Big) \\in [0, 1]$$

    (the upper bound is Cauchy-Schwarz). When the group estimates agree (a real signal, large
    $N_e$) $\\alpha \\to 1$; when they scatter around 0 (a spurious correlation) $\\alpha$ is
    small (its expectation before clipping is 0). Pairs whose regressions are all exactly 0
    (e.g. a constant observed variable) get weight 0. This is the HEF of Anderson (2007), not
    the Monte-Carlo sampling-error-correction tables of Anderson (2012).

    Use the weights like a taper matrix between state variables and observations, e.g.
    `localize(cov_xy, adaptive_localization(X, Y))`, usually averaged over cycles or combined
    with a distance taper, as Anderson does.

    **Arguments:**

    - `X`: `(N_e, N_x)` forecast state ensemble.
    - `Y`: `(N_e, N_y)` forecast ensemble in observation space, `jax.vmap(obs_op)(X)`.
    - `n_groups`: number of groups $M \\ge 2$ (static); it must divide $N_e$ and leave at least
      2 members per group.

    **Returns:**

    The `(N_x, N_y)` weights in $[0, 1]$.

    Reference: J. L. Anderson (2007), "Exploring the need for localization in ensemble data
    assimilation using a hierarchical ensemble filter", Physica D 230, 99-111.
    DAPPER has no equivalent; DART's `reg_factor_mod.comp_reg_factor` computes the same factor.

    **Example:**

    ```python
    weights = adaptive_localization(X, jax.vmap(obs_op)(X), n_groups=4)  # (N_x, N_y)
    ```
    """
    check_ensemble(X, "X")
    check_ensemble(Y, "Y")
    check_same_members(X, Y, "X", "Y")
    n_members = X.shape[0]
    if not isinstance(n_groups, int) or isinstance(n_groups, bool) or n_groups < 2:
        raise ValueError(f"n_groups must be a Python int >= 2; got {n_groups!r}.")
    if n_members % n_groups != 0 or n_members // n_groups < 2:
        raise ValueError(
            f"adaptive_localization splits the N_e={n_members} members into n_groups="
            f"{n_groups} equal groups of at least 2; pass an n_groups that divides N_e with "
            "N_e // n_groups >= 2 (e.g. N_e=20 with n_groups=4 or 5)."
        )
    dtype = jnp.result_type(X, Y)
    size = n_members // n_groups
    Xg = X.astype(dtype).reshape(n_groups, size, X.shape[1])
    Yg = Y.astype(dtype).reshape(n_groups, size, Y.shape[1])
    Xg = Xg - Xg.mean(axis=1, keepdims=True)
    Yg = Yg - Yg.mean(axis=1, keepdims=True)
    cross = jnp.einsum("gni,gnk->gik", Xg, Yg)
    y_var = jnp.sum(Yg**2, axis=1)[:, None, :]
    has_var = y_var > 0
    beta = jnp.where(has_var, cross / jnp.where(has_var, y_var, 1.0), 0.0)
    sum_beta = jnp.sum(beta, axis=0)
    sum_sq = jnp.sum(beta**2, axis=0)
    nonzero = sum_sq > 0
    ratio = jnp.where(nonzero, sum_beta**2 / jnp.where(nonzero, sum_sq, 1.0), 0.0)
    return jnp.clip((ratio - 1.0) / (n_groups - 1), 0.0, 1.0)


class AbstractLocalizer(eqx.Module):
    """A distance-based covariance localiser.

    Subclasses implement `taper(distance) -> weights`; `matrix` and `__call__` are concrete.
    `distance` is a static single-pair callable `distance(a, b) -> scalar` (default
    `euclidean`); bind extra arguments with `functools.partial`, e.g.
    `functools.partial(periodic, period=40.0)`.

    **Example:**

    ```python
    class CosineLocalizer(AbstractLocalizer):
        radius: Float[ArrayLike, ""]

        def taper(self, distance):
            z = jnp.clip(distance / self.radius, 0.0, 1.0)
            return 0.5 * (1.0 + jnp.cos(jnp.pi * z))
    ```
    """

    distance: Callable[..., Array] = eqx.field(static=True, default=euclidean, kw_only=True)

    @abc.abstractmethod
    def taper(self, distance: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        """Map distances to localisation weights in [0, 1] (1 at distance 0)."""

    def matrix(
        self,
        coords_a: Real[ArrayLike, " n *D"],
        coords_b: Real[ArrayLike, " m *D"] | None = None,
    ) -> Float[Array, "n m"]:
        """The `(n, m)` weight matrix between two sets of locations (`coords_b` defaults to
        `coords_a`)."""
        coords_b = coords_a if coords_b is None else coords_b
        return self.taper(pairwise_distances(coords_a, coords_b, self.distance))

    def __call__(
        self,
        cov: Float[Array, "n m"] | lx.AbstractLinearOperator,
        coords_a: Real[ArrayLike, " n *D"],
        coords_b: Real[ArrayLike, " m *D"] | None = None,
        *,
        densify: bool = False,
    ) -> Float[Array, "n m"]:
        """Localise `cov` (rows at `coords_a`, columns at `coords_b`, default `coords_a`)."""
        return localize(cov, self.matrix(coords_a, coords_b), densify=densify)


class GaspariCohnLocalizer(AbstractLocalizer):
    """Localiser with the Gaspari-Cohn (1999, eq. 4.10) taper of half-width `radius`.

    Weights vanish beyond $2\\,$`radius`. For DAPPER's `loc_rad`, pass
    `radius = 1.82 * loc_rad` (`dapper_radius_to_gc_halfwidth`).

    **Example:**

    ```python
    loc = GaspariCohnLocalizer(7.28, distance=functools.partial(periodic, period=40.0))
    P_loc = loc(P, jnp.arange(40.0))
    ```
    """

    radius: Float[ArrayLike, ""] = eqx.field(
        converter=parameter_converter("GaspariCohnLocalizer.radius", low=0.0, low_open=True)
    )

    def taper(self, distance: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return gaspari_cohn(distance, self.radius)


class GaussianLocalizer(AbstractLocalizer):
    """Localiser with the Gaussian taper $\\exp(-d^2 / 2r^2)$, $r$ = `radius` (= DAPPER's
    `loc_rad` with `tag="Gauss"`).

    **Example:**

    ```python
    P_loc = GaussianLocalizer(4.0)(P, grid)
    ```
    """

    radius: Float[ArrayLike, ""] = eqx.field(
        converter=parameter_converter("GaussianLocalizer.radius", low=0.0, low_open=True)
    )

    def taper(self, distance: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return gaussian_taper(distance, self.radius)


class SOARLocalizer(AbstractLocalizer):
    """Localiser with the SOAR taper $(1 + d/r)\\exp(-d/r)$, $r$ = `radius`.

    **Example:**

    ```python
    P_loc = SOARLocalizer(2.0)(P, grid)
    ```
    """

    radius: Float[ArrayLike, ""] = eqx.field(
        converter=parameter_converter("SOARLocalizer.radius", low=0.0, low_open=True)
    )

    def taper(self, distance: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return soar_taper(distance, self.radius)


class HardCutoffLocalizer(AbstractLocalizer):
    """Localiser keeping pairs with $d \\le r$ = `radius` and dropping the rest.

    Its gradient with respect to `radius` is 0 (the documented non-differentiable taper); it
    is not positive definite, so prefer it for observation selection.

    **Example:**

    ```python
    weights = HardCutoffLocalizer(5.0).matrix(grid, obs_sites)
    ```
    """

    radius: Float[ArrayLike, ""] = eqx.field(
        converter=parameter_converter("HardCutoffLocalizer.radius", low=0.0, low_open=True)
    )

    def taper(self, distance: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return hard_cutoff(distance, self.radius)
