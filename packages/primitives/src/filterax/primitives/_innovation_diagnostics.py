"""Observation-space consistency diagnostics.

Notation: ``d_of = y - H(xbar^f)`` (innovation, observation minus forecast), ``d_oa = y -
H(xbar^a)`` (observation minus analysis), ``d_ab = H(xbar^a) - H(xbar^f) = d_of - d_oa``
(analysis increment in observation space). NaN marks a missing observation everywhere.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, Float

from ._validation import check_ensemble, check_positive, check_same_members

_HIGHEST = jax.lax.Precision.HIGHEST


def _working_dtype(*arrays: Any) -> Any:
    dtype = jnp.result_type(*arrays)
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(
            f"expected floating-point arrays; got dtype {dtype}. Cast the inputs with "
            ".astype(jnp.float32) or .astype(jnp.float64)."
        )
    return dtype


def _noise_parts(obs_noise: Any, n_obs: int, dtype: Any) -> tuple[Array | None, Array | None]:
    """Split R into ``(variances, None)`` when diagonal or ``(None, matrix)`` otherwise."""
    if isinstance(obs_noise, lx.AbstractLinearOperator):
        if obs_noise.in_size() != n_obs or obs_noise.out_size() != n_obs:
            raise ValueError(
                f"obs_noise acts on vectors of size {obs_noise.in_size()} -> "
                f"{obs_noise.out_size()}, but there are N_y={n_obs} observations. Pass an "
                f"({n_obs}, {n_obs}) operator, e.g. lx.DiagonalLinearOperator(variances)."
            )
        if lx.is_diagonal(obs_noise):
            return lx.diagonal(obs_noise).astype(dtype), None
        return None, obs_noise.as_matrix().astype(dtype)
    if obs_noise is None:
        raise ValueError(
            "obs_noise is required here: pass R as a lineax operator (e.g. "
            "lx.DiagonalLinearOperator(variances)), a (N_y,) array of variances, a scalar "
            "variance c meaning c*I, or a dense (N_y, N_y) covariance."
        )
    noise = jnp.asarray(obs_noise)
    if noise.ndim == 0:
        noise = check_positive(noise, "obs_noise variance")
        return jnp.broadcast_to(noise, (n_obs,)).astype(dtype), None
    if noise.shape == (n_obs,):
        noise = check_positive(noise, "obs_noise variances")
        return noise.astype(dtype), None
    if noise.shape == (n_obs, n_obs):
        return None, noise.astype(dtype)
    raise ValueError(
        f"obs_noise must be a lineax operator, a scalar variance, a ({n_obs},) array of "
        f"variances or a ({n_obs}, {n_obs}) covariance; got shape {noise.shape}."
    )


def _centre(ensemble: Array) -> Array:
    return ensemble - jnp.mean(ensemble, axis=0, keepdims=True)


def _masked_dense_quadratic(matrix: Array, v: Array, mask: Array) -> Array:
    """``v_o^T S_oo^{-1} v_o`` on the observed subset ``o`` without changing shapes.

    Rows/columns of missing entries are replaced by those of the identity, so the masked
    matrix is block-diagonal ``[S_oo, I]`` (up to a permutation) and ``v`` is zero off ``o``.
    """
    pair = mask[:, None] & mask[None, :]
    masked = jnp.where(pair, matrix, 0) + jnp.diag(jnp.where(mask, 0, 1).astype(matrix.dtype))
    chol = jnp.linalg.cholesky(masked)
    z = jax.scipy.linalg.solve_triangular(chol, v, lower=True)
    return jnp.sum(jnp.square(z))


def innovation_chi2(
    innovation: Float[ArrayLike, " N_y"],
    obs_anomalies_or_S: Float[ArrayLike, "N_e N_y"] | lx.AbstractLinearOperator,
    obs_noise: lx.AbstractLinearOperator | ArrayLike | None = None,
) -> Float[Array, ""]:
    r"""Normalised innovation chi-squared (squared Mahalanobis norm per observation).

    $$\chi^2_\nu = \frac{1}{n_\mathrm{obs}}\, v^\top S^{-1} v, \qquad
      S = H P^f H^\top + R \approx \frac{Y'^\top Y'}{N_e - 1} + R,$$

    where $v = y - \overline{H(X^f)}$ and $Y'$ are the forecast-ensemble anomalies in
    observation space. For a consistent filter $v \sim \mathcal N(0, S)$, so
    $v^\top S^{-1} v \sim \chi^2_{n_\mathrm{obs}}$ and the returned value has mean 1 and
    variance $2/n_\mathrm{obs}$: time-averages well above 1 mean the filter is over-confident
    (spread or R too small), below 1 under-confident. NaN entries of `innovation` are
    missing observations: they are dropped (the quadratic form uses the observed block of $S$)
    and $n_\mathrm{obs}$ counts only finite entries; with no finite entry the result is NaN.

    With an ensemble and diagonal R the solve runs in ensemble space (Woodbury,
    $O(N_e^2 N_y + N_e^3)$, no $N_y \times N_y$ matrix); a non-diagonal R is densified.

    **Arguments:**

    - `innovation`: `(N_y,)` innovation $v = y - \overline{H(X^f)}$ (NaN = missing).
    - `obs_anomalies_or_S`: either the forecast ensemble in observation space `(N_e, N_y)`
      (members $H(x^{(j)})$ or their anomalies; the mean is removed here), or the innovation
      covariance $S$ itself as a lineax operator (wrap a dense array as
      `lx.MatrixLinearOperator(S, lx.positive_semidefinite_tag)`).
    - `obs_noise`: R when an ensemble is given: a lineax operator, `(N_y,)` variances, a
      scalar variance (c·I) or a dense `(N_y, N_y)` matrix. Must be `None` when $S$ is given
      (it already contains R).

    **Returns:**

    The scalar $v^\top S^{-1} v / n_\mathrm{obs}$. For a time series, `jax.vmap` over time
    and average.

    **References:** Ménard (2000), MWR 128, 2654-2671; Desroziers et al. (2005), QJRMS 131,
    3385-3396 (§2). No DAPPER equivalent.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    from filterax.primitives import innovation_chi2

    Y = jax.random.normal(jax.random.key(0), (20, 5))  # H(X^f)
    innovation_chi2(jnp.ones(5), Y, jnp.full(5, 0.5))
    ```
    """
    innovation = jnp.asarray(innovation)
    if innovation.ndim != 1:
        raise ValueError(
            f"innovation must be a 1-D vector (N_y,); got shape {innovation.shape}. For a "
            "time series use jax.vmap(innovation_chi2, in_axes=(0, 0, None))."
        )
    n_obs = innovation.shape[0]
    mask = jnp.isfinite(innovation)
    v = jnp.where(mask, innovation, 0)
    count = jnp.sum(mask)

    if isinstance(obs_anomalies_or_S, lx.AbstractLinearOperator):
        if obs_noise is not None:
            raise ValueError(
                "obs_anomalies_or_S is the innovation covariance S = HPH^T + R, which already "
                "includes R; pass obs_noise=None (or pass the ensemble in observation space "
                "instead of S)."
            )
        cov = obs_anomalies_or_S
        if cov.in_size() != n_obs or cov.out_size() != n_obs:
            raise ValueError(
                f"S must be an ({n_obs}, {n_obs}) operator to match the innovation; got "
                f"{cov.out_size()} x {cov.in_size()}."
            )
        dtype = _working_dtype(innovation)
        v = v.astype(dtype)
        if lx.is_diagonal(cov):
            diag = lx.diagonal(cov).astype(dtype)
            quad = jnp.sum(jnp.square(v) / jnp.where(mask, diag, 1))
        else:
            quad = _masked_dense_quadratic(cov.as_matrix().astype(dtype), v, mask)
        return quad / count.astype(dtype)

    ensemble = jnp.asarray(obs_anomalies_or_S)
    check_ensemble(ensemble, "obs_anomalies_or_S")
    n_members = ensemble.shape[0]
    if ensemble.shape[1] != n_obs:
        raise ValueError(
            f"obs_anomalies_or_S has N_y={ensemble.shape[1]} columns but the innovation has "
            f"{n_obs} entries; pass H applied to every member, shape (N_e, {n_obs})."
        )
    dtype = _working_dtype(innovation, ensemble)
    v = v.astype(dtype)
    anomalies = _centre(ensemble.astype(dtype))
    variances, matrix = _noise_parts(obs_noise, n_obs, dtype)
    if variances is not None:
        # Whitened, masked quantities make S = I + Yw^T Yw with zero rows/cols off the
        # observed set, so Woodbury gives v^T S^-1 v = |vw|^2 - b^T (I + Yw Yw^T)^-1 b.
        weight = jnp.where(mask, 1 / jnp.sqrt(jnp.where(mask, variances, 1)), 0)
        v_white = v * weight
        y_white = anomalies * (weight / jnp.sqrt(n_members - 1))[None, :]
        b = jnp.matmul(y_white, v_white, precision=_HIGHEST)
        gram = jnp.matmul(y_white, y_white.T, precision=_HIGHEST)
        chol = jnp.linalg.cholesky(jnp.eye(n_members, dtype=dtype) + gram)
        z = jax.scipy.linalg.solve_triangular(chol, b, lower=True)
        quad = jnp.sum(jnp.square(v_white)) - jnp.sum(jnp.square(z))
    else:
        cov = jnp.matmul(anomalies.T, anomalies, precision=_HIGHEST) / (n_members - 1)
        quad = _masked_dense_quadratic(cov + matrix, v, mask)
    return quad / count.astype(dtype)


def _cross_moment(
    left: ArrayLike, right: ArrayLike, names: tuple[str, str], full: bool, symmetrize: bool
) -> Array:
    """Time mean of ``left_t right_t^T`` over the times where both entries are finite."""
    left = jnp.asarray(left)
    right = jnp.asarray(right)
    if left.ndim != 2 or left.shape != right.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must both have shape (T, N_y), one row per analysis "
            f"time; got {left.shape} and {right.shape}. Stack the per-time vectors with "
            "jnp.stack."
        )
    dtype = _working_dtype(left, right)
    left_mask = jnp.isfinite(left)
    right_mask = jnp.isfinite(right)
    left0 = jnp.where(left_mask, left, 0).astype(dtype)
    right0 = jnp.where(right_mask, right, 0).astype(dtype)
    if not full:
        total = jnp.sum(left0 * right0, axis=0)
        count = jnp.sum(left_mask & right_mask, axis=0)
        return total / count.astype(dtype)
    total = jnp.matmul(left0.T, right0, precision=_HIGHEST)
    count = jnp.matmul(left_mask.T.astype(dtype), right_mask.astype(dtype), precision=_HIGHEST)
    moment = total / count
    if symmetrize:
        moment = 0.5 * (moment + moment.T)
    return moment


def desroziers_obs_error(
    d_of: Float[ArrayLike, "T N_y"],
    d_oa: Float[ArrayLike, "T N_y"],
    *,
    full: bool = False,
    symmetrize: bool = True,
) -> Float[Array, " N_y"] | Float[Array, "N_y N_y"]:
    r"""Desroziers estimate of the observation-error covariance R.

    $$\widehat R = \langle d^o_a\, (d^o_f)^\top \rangle_t \approx R,\qquad
      d^o_f = y - H\bar x^f,\; d^o_a = y - H\bar x^a .$$

    For an optimal linear analysis $d^o_a = R S^{-1} d^o_f$ with
    $E[d^o_f (d^o_f)^\top] = S = HBH^\top + R$, hence $E[d^o_a (d^o_f)^\top] = R$. The
    estimate is exact in expectation only when the gain used was optimal for the true R and
    B (Desroziers et al. 2005, §2); otherwise iterate (re-run the analysis with the estimate)
    or read it as a diagnostic of the mismatch.

    Time means are taken per entry over the times where both factors are finite, so missing
    observations (NaN) are skipped; an entry never (jointly) observed comes back NaN. The
    estimate is an uncentred second moment, as in the paper: remove observation bias first.

    **Arguments:**

    - `d_of`: `(T, N_y)` innovations $y - H\bar x^f$ over the analysis times (NaN = missing).
    - `d_oa`: `(T, N_y)` analysis residuals $y - H\bar x^a$, same shape.
    - `full`: return the full `(N_y, N_y)` matrix instead of its diagonal.
    - `symmetrize`: with `full=True`, return the symmetric part ½(C + Cᵀ) of the (in finite
      samples non-symmetric) estimate C.

    **Returns:**

    The `(N_y,)` estimated variances, or the `(N_y, N_y)` matrix when `full=True`.

    **Reference:** Desroziers, Berre, Chapnik & Poli (2005), "Diagnosis of observation,
    background and analysis-error statistics in observation space", QJRMS 131, 3385-3396.
    No DAPPER equivalent.

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.primitives import desroziers_obs_error

    d_of = jnp.array([[1.0, 2.0], [-1.0, jnp.nan]])
    desroziers_obs_error(d_of, 0.5 * d_of)  # [0.5, 2.0]: the NaN time is skipped
    ```
    """
    return _cross_moment(d_oa, d_of, ("d_oa", "d_of"), full, symmetrize)


def desroziers_background_error(
    d_ab: Float[ArrayLike, "T N_y"],
    d_of: Float[ArrayLike, "T N_y"],
    *,
    full: bool = False,
    symmetrize: bool = True,
) -> Float[Array, " N_y"] | Float[Array, "N_y N_y"]:
    r"""Desroziers estimate of the background-error covariance in observation space, HBHᵀ.

    $$\widehat{HBH^\top} = \langle d^a_f\, (d^o_f)^\top \rangle_t,\qquad
      d^a_f = H\bar x^a - H\bar x^f = d^o_f - d^o_a .$$

    For an optimal analysis $d^a_f = HBH^\top S^{-1} d^o_f$, so the expectation is
    $HBH^\top$. Missing entries (NaN), optimality and bias caveats as in
    [`desroziers_obs_error`][filterax.primitives.desroziers_obs_error].

    **Arguments:**

    - `d_ab`: `(T, N_y)` increments $H\bar x^a - H\bar x^f$ (NaN = missing).
    - `d_of`: `(T, N_y)` innovations $y - H\bar x^f$, same shape.
    - `full`: return the full `(N_y, N_y)` matrix instead of its diagonal.
    - `symmetrize`: with `full=True`, return the symmetric part of the estimate.

    **Returns:**

    The `(N_y,)` diagonal of the estimate, or the `(N_y, N_y)` matrix when `full=True`.

    **Reference:** Desroziers et al. (2005), QJRMS 131, 3385-3396. No DAPPER equivalent.

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.primitives import desroziers_background_error

    d_of = jnp.array([[1.0, 2.0], [-1.0, 1.0]])
    desroziers_background_error(0.5 * d_of, d_of)  # [0.5, 1.25]
    ```
    """
    return _cross_moment(d_ab, d_of, ("d_ab", "d_of"), full, symmetrize)


def desroziers_analysis_error(
    d_ab: Float[ArrayLike, "T N_y"],
    d_oa: Float[ArrayLike, "T N_y"],
    *,
    full: bool = False,
    symmetrize: bool = True,
) -> Float[Array, " N_y"] | Float[Array, "N_y N_y"]:
    r"""Desroziers estimate of the analysis-error covariance in observation space, HAHᵀ.

    $$\widehat{HAH^\top} = \langle d^a_f\, (d^o_a)^\top \rangle_t .$$

    For an optimal analysis $E[d^a_f (d^o_a)^\top] = HBH^\top S^{-1} R = H P^a H^\top$.
    Missing entries (NaN), optimality and bias caveats as in
    [`desroziers_obs_error`][filterax.primitives.desroziers_obs_error].

    **Arguments:**

    - `d_ab`: `(T, N_y)` increments $H\bar x^a - H\bar x^f$ (NaN = missing).
    - `d_oa`: `(T, N_y)` analysis residuals $y - H\bar x^a$, same shape.
    - `full`: return the full `(N_y, N_y)` matrix instead of its diagonal.
    - `symmetrize`: with `full=True`, return the symmetric part of the estimate.

    **Returns:**

    The `(N_y,)` diagonal of the estimate, or the `(N_y, N_y)` matrix when `full=True`.

    **Reference:** Desroziers et al. (2005), QJRMS 131, 3385-3396. No DAPPER equivalent.

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.primitives import desroziers_analysis_error

    d_of = jnp.array([[1.0, 2.0], [-1.0, 1.0]])
    desroziers_analysis_error(0.5 * d_of, 0.5 * d_of)  # [0.25, 0.625]
    ```
    """
    return _cross_moment(d_ab, d_oa, ("d_ab", "d_oa"), full, symmetrize)


def _whiten(anomalies: Array, variances: Array | None, matrix: Array | None) -> Array:
    """Rows ``R^{-1/2} y`` (Cholesky factor for a dense R) of an ``(N_e, N_y)`` array."""
    if variances is not None:
        return anomalies / jnp.sqrt(variances)[None, :]
    chol = jnp.linalg.cholesky(matrix)
    return jax.scipy.linalg.solve_triangular(chol, anomalies.T, lower=True).T


def dfs(
    analysis_obs_anomalies: Float[ArrayLike, "N_e N_y"] | None,
    forecast_obs_anomalies: Float[ArrayLike, "N_e N_y"] | None,
    obs_noise: lx.AbstractLinearOperator | ArrayLike,
    *,
    method: Literal["analysis", "forecast", "ratio"] = "analysis",
) -> Float[Array, ""]:
    r"""Degrees of freedom for signal, $\mathrm{DFS} = \mathrm{tr}(HK)$, in ensemble space.

    DFS is the trace of the influence matrix $\partial (H\bar x^a) / \partial y = (HK)^\top$:
    how many independent pieces of information the observations contribute (between 0 and
    $\min(N_y, N_e - 1)$ for an ensemble). Three identities, all equal to $\mathrm{tr}(HK)$ for
    the optimal gain $K = P^f H^\top (H P^f H^\top + R)^{-1}$ with $P^f, P^a$ the ensemble
    covariances, are offered (with $Y' = $ anomalies of $H(X)$ and
    $\tilde Y = Y' R^{-1/2} / \sqrt{N_e - 1}$):

    - `method="analysis"` (default; Liu, Kalnay et al. 2009, after Cardinali et al. 2004):
      $\mathrm{tr}(HK) = \mathrm{tr}(R^{-1} H P^a H^\top) = \|\tilde Y^a\|_F^2$, from the
      *analysis* ensemble alone. It measures the influence the analysis actually achieved,
      so it also reflects localisation and inflation. `forecast_obs_anomalies` may be `None`.
    - `method="forecast"`: $\mathrm{tr}(H P^f H^\top S^{-1}) =
      \mathrm{tr}\bigl(G (I_{N_e} + G)^{-1}\bigr)$ with $G = \tilde Y^f \tilde Y^{f\top}$
      ($= \sum_k \lambda_k / (1 + \lambda_k)$ over the eigenvalues of $G$): the nominal DFS
      of the ensemble Kalman gain, from the *forecast* ensemble alone.
      `analysis_obs_anomalies` may be `None`.
    - `method="ratio"`: the tutorial's $\mathrm{tr}(I - P^a (P^f)^{-1})$ in the observed
      subspace, $r - \mathrm{tr}\bigl(H P^a H^\top (H P^f H^\top)^{+}\bigr)$ with $r$ the
      rank of $H P^f H^\top$ (pseudo-inverse, because an ensemble covariance is singular
      whenever $N_e - 1 < N_y$). Needs both ensembles; uses an eigendecomposition with a
      rank cut-off, so prefer the other methods inside `jax.grad`.

    **Arguments:**

    - `analysis_obs_anomalies`: `(N_e, N_y)` analysis ensemble in observation space,
      $H(x^{a,(j)})$ or its anomalies (the mean is removed here).
    - `forecast_obs_anomalies`: `(N_e, N_y)` forecast ensemble in observation space.
    - `obs_noise`: R as a lineax operator, `(N_y,)` variances, a scalar variance (c·I) or a
      dense `(N_y, N_y)` matrix.
    - `method`: which identity to evaluate (see above).

    **Returns:**

    The scalar DFS.

    **References:** Cardinali, Pezzulli & Andersson (2004), QJRMS 130, 2767-2786; Liu, Kalnay,
    Miyoshi & Cardinali (2009), QJRMS 135, 523-533; Rodgers (2000), *Inverse Methods for
    Atmospheric Sounding*, §2.4. No DAPPER equivalent.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    from filterax.primitives import dfs

    Yf = jax.random.normal(jax.random.key(0), (10, 4))
    dfs(None, Yf, jnp.ones(4), method="forecast")  # between 0 and 4
    ```
    """
    if method not in ("analysis", "forecast", "ratio"):
        raise ValueError(f"method must be 'analysis', 'forecast' or 'ratio'; got {method!r}.")
    needs_analysis = method in ("analysis", "ratio")
    needs_forecast = method in ("forecast", "ratio")
    if needs_analysis and analysis_obs_anomalies is None:
        raise ValueError(f"dfs(method={method!r}) needs analysis_obs_anomalies (N_e, N_y).")
    if needs_forecast and forecast_obs_anomalies is None:
        raise ValueError(f"dfs(method={method!r}) needs forecast_obs_anomalies (N_e, N_y).")
    given = {
        name: jnp.asarray(value)
        for name, value in (
            ("analysis_obs_anomalies", analysis_obs_anomalies),
            ("forecast_obs_anomalies", forecast_obs_anomalies),
        )
        if value is not None
    }
    for name, value in given.items():
        check_ensemble(value, name)
    if len(given) == 2:
        analysis, forecast = given.values()
        check_same_members(analysis, forecast, "analysis_obs_anomalies", "forecast_obs_anomalies")
        if analysis.shape[1] != forecast.shape[1]:
            raise ValueError(
                f"analysis_obs_anomalies has N_y={analysis.shape[1]} but "
                f"forecast_obs_anomalies has N_y={forecast.shape[1]}; both must use the same "
                "observations."
            )
    n_members, n_obs = next(iter(given.values())).shape
    dtype = _working_dtype(*given.values())
    variances, matrix = _noise_parts(obs_noise, n_obs, dtype)
    scale = 1 / jnp.sqrt(jnp.asarray(n_members - 1, dtype))

    def whitened(name: str) -> Array:
        return _whiten(_centre(given[name].astype(dtype)), variances, matrix) * scale

    if method == "analysis":
        return jnp.sum(jnp.square(whitened("analysis_obs_anomalies")))
    y_forecast = whitened("forecast_obs_anomalies")
    gram = jnp.matmul(y_forecast, y_forecast.T, precision=_HIGHEST)
    eye = jnp.eye(n_members, dtype=dtype)
    if method == "forecast":
        return jnp.trace(jnp.linalg.solve(eye + gram, gram))
    y_analysis = whitened("analysis_obs_anomalies")
    eigenvalues, eigenvectors = jnp.linalg.eigh(gram)
    cutoff = jnp.max(eigenvalues) * max(n_members, n_obs) * jnp.finfo(dtype).eps
    kept = eigenvalues > cutoff
    inverse = jnp.where(kept, 1 / jnp.where(kept, eigenvalues, 1), 0)
    # Y_a Y_f^+ = Y_a Y_f^T (Y_f Y_f^T)^+ ; its squared Frobenius norm is tr(HP^aH^T (HP^fH^T)^+).
    cross = jnp.matmul(y_analysis, y_forecast.T, precision=_HIGHEST)
    projected = jnp.matmul(cross, eigenvectors, precision=_HIGHEST) * inverse[None, :]
    return jnp.sum(kept).astype(dtype) - jnp.sum(jnp.square(projected))
