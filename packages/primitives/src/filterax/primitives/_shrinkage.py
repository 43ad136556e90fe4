"""Ledoit-Wolf shrinkage of an ensemble covariance towards a scaled identity."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._validation import check_ensemble

__all__ = ["ledoit_wolf_shrinkage"]


def ledoit_wolf_shrinkage(
    X: Float[Array, "N_e N_x"], *, ddof: int = 0
) -> tuple[Float[Array, "N_x N_x"], Float[Array, ""]]:
    """Ledoit & Wolf (2004) shrinkage estimate of the covariance of an ensemble.

    With anomalies $x'_n = x_n - \\bar x$, $N = N_e$, $p = N_x$, the sample covariance
    $S = \\frac1N \\sum_n x'_n x'^\\top_n$ and the target $\\mu I$, $\\mu = \\operatorname{tr}S/p$:

    $$\\delta^2 = \\tfrac1p \\lVert S - \\mu I\\rVert_F^2, \\qquad
    \\bar\\beta^2 = \\tfrac{1}{N^2 p}\\sum_n \\lVert x'_n x'^\\top_n - S\\rVert_F^2
    = \\tfrac{1}{N p}\\Big(\\tfrac1N \\sum_n \\lVert x'_n\\rVert^4 - \\lVert S\\rVert_F^2\\Big),$$

    $$\\rho = \\min(\\bar\\beta^2, \\delta^2) / \\delta^2 \\in [0, 1], \\qquad
    \\hat\\Sigma = (1 - \\rho) S + \\rho\\,\\mu I$$

    ($\\rho = 0$ when $\\delta^2 = 0$, i.e. $S$ is already a multiple of $I$). This is exactly
    scikit-learn's `ledoit_wolf(X)` (`assume_centered=False`), which uses the biased $1/N$
    sample covariance; for $p = 1$ it returns $\\rho = 0$ and $\\hat\\Sigma = S$, as sklearn does.
    The intensity $\\rho$ is scale-invariant, so `ddof=1` only rescales the returned matrix by
    $N/(N-1)$ to the unbiased $1/(N-1)$ convention used elsewhere in filterax. Costs
    $O(N^2 p + N p^2)$; no $p \\times p$ matrix other than the output is formed.

    **Arguments:**

    - `X`: `(N_e, N_x)` ensemble (members along axis 0).
    - `ddof`: 0 (default; sklearn's normalisation) or 1 (the ensemble-DA $1/(N_e-1)$ one).

    **Returns:**

    `(shrunk_covariance, shrinkage_intensity)`: the `(N_x, N_x)` estimate $\\hat\\Sigma$ and
    the scalar $\\rho$.

    Reference: O. Ledoit and M. Wolf (2004), "A well-conditioned estimator for
    large-dimensional covariance matrices", J. Multivariate Anal. 88, 365-411.
    scikit-learn equivalent: `sklearn.covariance.ledoit_wolf`.

    **Example:**

    ```python
    cov, rho = ledoit_wolf_shrinkage(X)  # X: (20, 40) ensemble; cov is full-rank
    ```
    """
    check_ensemble(X, "X")
    if ddof not in (0, 1) or isinstance(ddof, bool):
        raise ValueError(f"ddof must be 0 (1/N, sklearn) or 1 (1/(N-1)); got {ddof!r}.")
    n, p = X.shape
    anomalies = X - X.mean(axis=0)[None, :]
    sample_cov = anomalies.T @ anomalies / n
    if p == 1:
        shrinkage = jnp.zeros((), dtype=X.dtype)
        shrunk = sample_cov
    else:
        row_sq = jnp.sum(anomalies**2, axis=1)
        mu = jnp.sum(row_sq) / (n * p)
        # ||S||_F^2 through the N x N Gram matrix: ||X'^T X'||_F = ||X' X'^T||_F.
        gram = anomalies @ anomalies.T
        frob_sq = jnp.sum(gram**2) / n**2
        beta = (jnp.sum(row_sq**2) / n - frob_sq) / (n * p)
        # ||S - mu I||_F^2 = ||S||_F^2 - 2 mu tr S + p mu^2, with tr S = p mu.
        delta = (frob_sq - p * mu**2) / p
        beta = jnp.minimum(beta, delta)
        positive = delta > 0
        shrinkage = jnp.where(positive, beta / jnp.where(positive, delta, 1.0), 0.0)
        shrunk = (1.0 - shrinkage) * sample_cov + shrinkage * mu * jnp.eye(p, dtype=X.dtype)
    if ddof == 1:
        shrunk = shrunk * (n / (n - 1))
    return shrunk, shrinkage
