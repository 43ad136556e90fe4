"""Verification scores for ensembles against a known truth.

Every score here follows DAPPER's conventions so numbers are comparable with published
benchmarks: the error of the *ensemble mean* is averaged over state components before the
square root, and spread uses the Bessel-corrected (``N_e - 1``) variance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Real

from ._validation import check_nonnegative, check_positive


def _check_floating(x: Array, name: str) -> None:
    if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        raise TypeError(
            f"{name} must be a floating-point array; got dtype {jnp.result_type(x)}. "
            "Cast it with .astype(jnp.float32) or .astype(jnp.float64)."
        )


def _safe_sqrt(x: Array) -> Array:
    # The double `where` keeps the gradient finite (zero) at x == 0, where d sqrt/dx is
    # infinite: a perfect estimate or a collapsed ensemble must not poison a training loss.
    # NaN (a missing or failed estimate) stays NaN: it must never score as a perfect 0.
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1)), jnp.where(x == 0, 0, x))


def rmse(
    estimate: Float[ArrayLike, "*batch N_x"], truth: Float[ArrayLike, "*batch N_x"]
) -> Float[Array, "*batch"]:
    r"""Root-mean-square error over the state components (the last axis).

    $$\mathrm{RMSE} = \sqrt{\tfrac{1}{N_x} \textstyle\sum_{i=1}^{N_x} (\hat x_i - x_i)^2}$$

    Pass the ensemble *mean* as `estimate` to get DAPPER's `rmse`; leading axes (e.g. time)
    are kept, so a `(T, N_x)` trajectory gives a `(T,)` series and `rmse(...).mean()` over the
    analysis times after burn-in is DAPPER's `rmse.a`. The gradient is finite (zero) at a
    perfect estimate.

    **Arguments:**

    - `estimate`: the estimate, `(N_x,)` or time-stacked `(T, N_x)` (any leading axes).
    - `truth`: the true state, same shape as `estimate`.

    **Returns:**

    The RMSE with the last axis reduced: a scalar for `(N_x,)` input, `(T,)` for `(T, N_x)`.

    **Reference:** DAPPER `dapper.stats` (`rmse = sqrt(mean(err**2))` of the ensemble mean).

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.primitives import rmse

    rmse(jnp.array([1.0, 2.0]), jnp.array([1.0, 4.0]))  # sqrt(2) ~ 1.414
    ```
    """
    estimate = jnp.asarray(estimate)
    truth = jnp.asarray(truth)
    if estimate.ndim < 1 or estimate.shape != truth.shape:
        raise ValueError(
            f"estimate and truth must have the same shape (..., N_x) with state components "
            f"on the last axis; got {estimate.shape} and {truth.shape}. For an ensemble, "
            "pass its mean: rmse(X.mean(axis=0), truth)."
        )
    _check_floating(estimate, "estimate")
    return _safe_sqrt(jnp.mean(jnp.square(estimate - truth), axis=-1))


def rms_spread(ensemble: Float[ArrayLike, "*batch N_e N_x"]) -> Float[Array, "*batch"]:
    r"""Root-mean-square ensemble spread (DAPPER's `rmv`).

    $$\sigma = \sqrt{\tfrac{1}{N_x} \textstyle\sum_{i=1}^{N_x} \tfrac{1}{N_e - 1}
    \sum_{j=1}^{N_e} (x^{(j)}_i - \bar x_i)^2}$$

    i.e. the square root of the mean Bessel-corrected variance, so that for a calibrated
    filter `rms_spread ~ rmse` (up to the finite-ensemble factor discussed in
    [`spread_skill_ratio`][filterax.primitives.spread_skill_ratio]). The gradient is finite (zero)
    for a collapsed ensemble.

    **Arguments:**

    - `ensemble`: `(N_e, N_x)` with the ensemble axis first, or time-stacked `(T, N_e, N_x)`
      (any leading axes). Needs `N_e >= 2`.

    **Returns:**

    A scalar for `(N_e, N_x)`, `(T,)` for `(T, N_e, N_x)`.

    **Reference:** DAPPER `rmv` (`spread.a` is its time mean over analysis times).

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.primitives import rms_spread

    rms_spread(jnp.array([[0.0, 0.0], [2.0, 2.0]]))  # var = 2 per component -> sqrt(2)
    ```
    """
    ensemble = jnp.asarray(ensemble)
    if ensemble.ndim < 2:
        raise ValueError(
            f"ensemble must have shape (N_e, N_x) or (T, N_e, N_x); got {ensemble.shape}. "
            "Stack members along the second-to-last axis."
        )
    n_members = ensemble.shape[-2]
    if n_members < 2:
        raise ValueError(
            f"rms_spread needs at least 2 members (the variance divides by N_e - 1); got "
            f"N_e={n_members} from shape {ensemble.shape}. Check the ensemble axis is "
            "second-to-last."
        )
    _check_floating(ensemble, "ensemble")
    anomalies = ensemble - jnp.mean(ensemble, axis=-2, keepdims=True)
    variance = jnp.sum(jnp.square(anomalies), axis=-2) / (n_members - 1)
    return _safe_sqrt(jnp.mean(variance, axis=-1))


def crps_ensemble(
    ensemble: Float[ArrayLike, "N_e N_x"], truth: Float[ArrayLike, " N_x"], *, fair: bool = False
) -> Float[Array, " N_x"]:
    r"""Continuous ranked probability score of an ensemble, one value per state component.

    The kernel form of the CRPS of the ensemble's empirical distribution
    (Gneiting & Raftery 2007, eq. 21):

    $$\mathrm{CRPS} = \frac{1}{N_e}\sum_j |x^{(j)} - y|
      - \frac{1}{2 N_e^2} \sum_{j,k} |x^{(j)} - x^{(k)}|,$$

    which equals $\int (F_{N_e}(z) - \mathbf 1\{y \le z\})^2\,dz$. With `fair=True` the second
    sum is divided by $2 N_e (N_e - 1)$ instead (Ferro 2014's "fair"/adjusted CRPS), an
    unbiased estimate of the CRPS of the distribution the members are drawn from, so scores of
    different ensemble sizes are comparable. The pair sum is computed in
    $O(N_e \log N_e)$ by sorting: with $x_{(1)} \le \dots \le x_{(N_e)}$,
    $\sum_{j,k} |x^{(j)} - x^{(k)}| = 2 \sum_i (2i - N_e - 1)\, x_{(i)}$.

    Lower is better; the score has the units of the state. Average the returned `(N_x,)`
    values (and over time, with `jax.vmap`) for a single number.

    **Arguments:**

    - `ensemble`: `(N_e, N_x)` members, ensemble axis first (`N_e >= 1`; `N_e >= 2` when
      `fair=True`).
    - `truth`: `(N_x,)` verifying values. A NaN truth gives a NaN score for that component.
    - `fair`: use the unbiased `N_e (N_e - 1)` normalisation of the spread term.

    **Returns:**

    `(N_x,)` CRPS per state component.

    **References:** Gneiting & Raftery (2007), JASA 102, 359-378; Ferro (2014), QJRMS 140,
    1917-1923. No DAPPER equivalent (DAPPER does not score CRPS).

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.primitives import crps_ensemble

    X = jnp.array([[0.0], [1.0]])
    crps_ensemble(X, jnp.array([0.0]))  # 0.5 - 0.25 = [0.25]
    ```
    """
    ensemble = jnp.asarray(ensemble)
    truth = jnp.asarray(truth)
    if ensemble.ndim != 2:
        raise ValueError(
            f"ensemble must be a 2-D array (N_e, N_x) with the ensemble axis first; got "
            f"shape {ensemble.shape}. For a time series, jax.vmap over the time axis."
        )
    n_members, n_state = ensemble.shape
    if truth.shape != (n_state,):
        raise ValueError(
            f"truth must have shape (N_x,) = ({n_state},) to match the ensemble; got {truth.shape}."
        )
    min_members = 2 if fair else 1
    if n_members < min_members:
        raise ValueError(
            f"crps_ensemble(fair={fair}) needs at least {min_members} member(s); got "
            f"N_e={n_members}. Use fair=False for a single-member (deterministic) forecast."
        )
    _check_floating(ensemble, "ensemble")
    skill = jnp.mean(jnp.abs(ensemble - truth[None, :]), axis=0)
    ordered = jnp.sort(ensemble, axis=0)
    ranks = jnp.arange(1, n_members + 1, dtype=ordered.dtype)
    weights = 2 * ranks - n_members - 1
    # Sum over ordered pairs |x_j - x_k| = 2 * sum_i (2i - N - 1) x_(i); half of it remains.
    half_pair_sum = jnp.sum(weights[:, None] * ordered, axis=0)
    denominator = n_members * (n_members - 1) if fair else n_members**2
    return skill - half_pair_sum / denominator


def weighted_crps(
    ensemble: Float[ArrayLike, "N N_x"],
    weights: Float[ArrayLike, " N"],
    truth: Float[ArrayLike, " N_x"],
    *,
    log: bool = True,
    fair: bool = False,
) -> Float[Array, " N_x"]:
    r"""CRPS of a weighted ensemble (importance-weighted particles), one value per component.

    The kernel form of the CRPS of the weighted empirical distribution
    $F_w = \sum_i W_i \delta_{x^{(i)}}$ with normalised weights $W_i$ (Gneiting & Raftery
    2007, eq. 21):

    $$\mathrm{CRPS}(F_w, y) = \sum_i W_i\,|x^{(i)} - y|
      - \frac12 \sum_{i,j} W_i W_j\,|x^{(i)} - x^{(j)}| ,$$

    equal to $\int (F_w(z) - \mathbf 1\{y \le z\})^2\,dz$. The pair sum is computed in
    $O(N \log N)$ by sorting: with $x_{(1)} \le \dots \le x_{(N)}$, their weights
    $W_{(k)}$ and $C_k = \sum_{l \le k} W_{(l)}$,
    $\sum_{i,j} W_i W_j |x^{(i)} - x^{(j)}| = 2 \sum_k W_{(k)}\, x_{(k)}\,(2C_k - W_{(k)} - 1)$.
    With `fair=True` the spread term keeps only the pairs $i \ne j$ and is divided by
    $1 - \sum_i W_i^2$ (the unbiased weighting of DAPPER's weighted variance), which for
    equal weights is Ferro's (2014) fair CRPS of
    [`crps_ensemble`][filterax.primitives.crps_ensemble]; equal weights reproduce
    `crps_ensemble` (either `fair`) to round-off.

    Particle filters need this score: between resamplings (and after a weight-root
    resampling) their particles carry unequal weights, and the unweighted CRPS of such an
    ensemble scores a different distribution. Gradients flow to the members, the weights and
    the truth (the sort is a permutation).

    **Arguments:**

    - `ensemble`: `(N, N_x)` members, ensemble axis first (`N >= 1`; `N >= 2` when `fair`).
    - `weights`: `(N,)` log-weights (default; `-inf` = zero weight) or, with `log=False`,
      non-negative weights; need not be normalised.
    - `truth`: `(N_x,)` verifying values (a NaN truth gives a NaN score for its component).
    - `log`: `True` if `weights` are log-weights.
    - `fair`: the unbiased spread term (NaN when a single member carries all the weight:
      the fair score of one effective member is undefined).

    **Returns:**

    `(N_x,)` CRPS per state component.

    **References:** Gneiting & Raftery (2007), JASA 102, 359-378; Ferro (2014), QJRMS 140,
    1917-1923. No DAPPER equivalent.

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.primitives import weighted_crps

    X = jnp.array([[0.0], [1.0]])
    weighted_crps(X, jnp.log(jnp.array([0.75, 0.25])), jnp.array([0.0]))
    # 0.25 - 0.75 * 0.25 = [0.0625]
    ```
    """
    ensemble = jnp.asarray(ensemble)
    weights = jnp.asarray(weights)
    truth = jnp.asarray(truth)
    if ensemble.ndim != 2:
        raise ValueError(
            f"ensemble must be a 2-D array (N, N_x) with the ensemble axis first; got shape "
            f"{ensemble.shape}. For a time series, jax.vmap over the time axis."
        )
    n_members, n_state = ensemble.shape
    if weights.shape != (n_members,):
        raise ValueError(
            f"weights must have shape (N,) = ({n_members},), one per member; got {weights.shape}."
        )
    if truth.shape != (n_state,):
        raise ValueError(
            f"truth must have shape (N_x,) = ({n_state},) to match the ensemble; got {truth.shape}."
        )
    if n_members < (2 if fair else 1):
        raise ValueError(
            f"weighted_crps(fair=True) needs at least 2 members; got N={n_members}. Use "
            "fair=False for a single member."
        )
    _check_floating(ensemble, "ensemble")
    _check_floating(weights, "weights")
    if log:
        w = jax.nn.softmax(weights)
    else:
        check_nonnegative(weights, "weights (with log=False)")
        w = weights / jnp.sum(weights)
    w = w.astype(ensemble.dtype)
    skill = jnp.sum(w[:, None] * jnp.abs(ensemble - truth[None, :]), axis=0)
    order = jnp.argsort(ensemble, axis=0)
    ordered = jnp.take_along_axis(ensemble, order, axis=0)
    w_sorted = w[order]  # (N, N_x): the weights in each component's order
    cumulative = jnp.cumsum(w_sorted, axis=0)
    # Half the ordered-pair sum: sum_k W_(k) x_(k) (2 C_k - W_(k) - 1).
    half_pair_sum = jnp.sum(w_sorted * ordered * (2 * cumulative - w_sorted - 1), axis=0)
    if not fair:
        return skill - half_pair_sum
    # The diagonal pairs contribute 0 to the pair sum; only the normalisation changes.
    distinct = 1 - jnp.sum(w * w)
    ok = distinct > 8 * jnp.finfo(ensemble.dtype).eps
    return jnp.where(ok, skill - half_pair_sum / jnp.where(ok, distinct, 1), jnp.nan)


def rank_histogram(
    ensemble_over_time: Float[ArrayLike, "T N_e N_x"],
    truth: Float[ArrayLike, "T N_x"],
    *,
    key: PRNGKeyArray | None = None,
) -> Int[Array, " N_e+1"]:
    r"""Talagrand rank histogram of the truth among the ensemble members.

    For every time `t` and component `i`, the rank of the truth is the number of members below
    it, $r = \#\{j : x^{(j)}_{t,i} < y_{t,i}\} \in \{0, \dots, N_e\}$; the histogram counts the
    ranks over all `(t, i)`. When `key` is given, ties (members exactly equal to the truth) are
    broken uniformly at random, $r \leftarrow r + U\{0, \dots, \#\text{ties}\}$ (Hamill
    2001); without a key a tie counts as the member being above the truth (lowest rank).
    Entries with a non-finite truth (missing) are not counted.

    How to read it: flat for a reliable ensemble (truth exchangeable with the members);
    U-shaped when the ensemble is under-dispersive (truth too often outside it); dome-shaped
    when over-dispersive; sloped when biased. Test flatness with
    [`rank_histogram_chi2`][filterax.primitives.rank_histogram_chi2].

    **Arguments:**

    - `ensemble_over_time`: `(T, N_e, N_x)` ensembles, ensemble axis second.
    - `truth`: `(T, N_x)` true states (NaN = not counted).
    - `key`: optional PRNG key for random tie-breaking.

    **Returns:**

    Integer counts over the `N_e + 1` rank bins; they sum to the number of finite truth entries.

    **References:** Anderson (1996), J. Climate 9, 1518-1530; Hamill (2001), MWR 129, 550-560;
    DAPPER's rank-histogram statistic `rh`.

    **Example:**

    ```python
    import jax
    from filterax.primitives import rank_histogram

    k1, k2 = jax.random.split(jax.random.key(0))
    counts = rank_histogram(
        jax.random.normal(k1, (100, 9, 4)), jax.random.normal(k2, (100, 4))
    )  # 10 roughly equal bins summing to 400
    ```
    """
    ensemble_over_time = jnp.asarray(ensemble_over_time)
    truth = jnp.asarray(truth)
    if ensemble_over_time.ndim != 3:
        raise ValueError(
            "ensemble_over_time must have shape (T, N_e, N_x); got "
            f"{ensemble_over_time.shape}. For a single time, add a leading axis: X[None]."
        )
    n_times, n_members, n_state = ensemble_over_time.shape
    if truth.shape != (n_times, n_state):
        raise ValueError(
            f"truth must have shape (T, N_x) = ({n_times}, {n_state}); got {truth.shape}."
        )
    _check_floating(ensemble_over_time, "ensemble_over_time")
    below = jnp.sum(ensemble_over_time < truth[:, None, :], axis=1)
    if key is None:
        rank = below
    else:
        ties = jnp.sum(ensemble_over_time == truth[:, None, :], axis=1)
        u = jax.random.uniform(key, (n_times, n_state))
        extra = jnp.minimum(jnp.floor(u * (ties + 1)).astype(below.dtype), ties)
        rank = below + extra
    counted = jnp.isfinite(truth)
    bins = jnp.arange(n_members + 1)[None, None, :]
    hits = (rank[:, :, None] == bins) & counted[:, :, None]
    return jnp.sum(hits, axis=(0, 1))


def rank_histogram_chi2(counts: Real[ArrayLike, " B"]) -> Float[Array, ""]:
    r"""Pearson $\chi^2$ flatness statistic of a rank histogram.

    $$\chi^2 = \sum_{k=1}^{B} \frac{(n_k - M/B)^2}{M/B}, \qquad M = \sum_k n_k .$$

    How to read it: if the ranks were independent draws from a flat histogram, $\chi^2$
    follows a chi-squared distribution with $B - 1$ degrees of freedom (mean $B - 1$), so
    compare with e.g. `scipy.stats.chi2.ppf(0.99, B - 1)`; larger means significantly
    non-flat. Ranks pooled over neighbouring grid points and consecutive times are
    correlated, which inflates $\chi^2$, so treat the test as indicative (Jolliffe & Primo
    2008; Wilks 2011). A sample-size-free measure is Candille & Talagrand's
    $\delta = \chi^2 / (B - 1)$, close to 1 for a reliable ensemble. The statistic says *that*
    the histogram is not flat; its shape (see
    [`rank_histogram`][filterax.primitives.rank_histogram]) says *why*.

    **Arguments:**

    - `counts`: `(B,)` histogram counts, e.g. from
    [`rank_histogram`][filterax.primitives.rank_histogram] (`B = N_e + 1 >= 2`).

    **Returns:**

    The scalar $\chi^2$ statistic (floating; NaN if all counts are zero).

    **References:** Jolliffe & Primo (2008), MWR 136, 2442-2451; Candille & Talagrand (2005),
    QJRMS 131, 2131-2150.

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.primitives import rank_histogram_chi2

    rank_histogram_chi2(jnp.array([10, 10, 10, 10]))  # 0.0: perfectly flat
    ```
    """
    counts = jnp.asarray(counts)
    if counts.ndim != 1 or counts.shape[0] < 2:
        raise ValueError(
            f"counts must be a 1-D histogram with at least 2 bins; got shape {counts.shape}. "
            "Pass the output of rank_histogram."
        )
    check_nonnegative(counts, "counts")
    dtype = counts.dtype if jnp.issubdtype(counts.dtype, jnp.inexact) else float
    counts = counts.astype(dtype)
    expected = jnp.sum(counts) / counts.shape[0]
    return jnp.sum(jnp.square(counts - expected)) / expected


def spread_skill_ratio(
    spread: Float[ArrayLike, "*T"],
    rmse: Float[ArrayLike, "*T"],
    *,
    ensemble_size: int | None = None,
) -> Float[Array, ""]:
    r"""Ratio of time-mean ensemble spread to time-mean RMSE.

    $$\mathrm{SSR} = \frac{\langle \sigma_t \rangle_t}{\langle \mathrm{RMSE}_t \rangle_t}$$

    with $\sigma_t$ from [`rms_spread`][filterax.primitives.rms_spread] and $\mathrm{RMSE}_t$
    from [`rmse`][filterax.primitives.rmse] of the ensemble mean, i.e. DAPPER's `spread.a / rmse.a`.
    Below 1: the ensemble is over-confident (under-dispersive; more inflation is needed);
    above 1: over-dispersive.

    Even a perfectly reliable ensemble of $N_e$ members has
    $E[\mathrm{RMSE}^2] = (1 + 1/N_e)\,E[\sigma^2]$, because the ensemble mean itself is
    uncertain (Fortin et al. 2014), so its ratio is about $\sqrt{N_e/(N_e+1)}$. Pass
    `ensemble_size` to multiply the spread by $\sqrt{(N_e+1)/N_e}$, making 1 the calibrated
    value.

    **Arguments:**

    - `spread`: `(T,)` spread time series (or a scalar).
    - `rmse`: `(T,)` RMSE time series, same shape as `spread`.
    - `ensemble_size`: optional `N_e` for the finite-ensemble correction.

    **Returns:**

    The scalar ratio.

    **Reference:** Fortin, Abaza, Anctil & Turcotte (2014), J. Hydrometeor. 15, 1708-1713.

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.primitives import spread_skill_ratio

    spread_skill_ratio(jnp.array([0.5, 0.7]), jnp.array([1.0, 1.4]))  # 0.5
    ```
    """
    spread = jnp.asarray(spread)
    rmse = jnp.asarray(rmse)
    if spread.shape != rmse.shape:
        raise ValueError(
            f"spread and rmse must have the same shape (one value per time); got "
            f"{spread.shape} and {rmse.shape}."
        )
    _check_floating(spread, "spread")
    ratio = jnp.mean(spread) / jnp.mean(rmse)
    if ensemble_size is not None:
        if not isinstance(ensemble_size, int) or ensemble_size < 1:
            raise ValueError(
                f"ensemble_size must be a positive Python int (N_e); got {ensemble_size!r}."
            )
        ratio = ratio * ((ensemble_size + 1) / ensemble_size) ** 0.5
    return ratio


def effective_sample_size(
    weights: Float[ArrayLike, "*batch N"], *, log: bool = True
) -> Float[Array, "*batch"]:
    r"""Effective sample size of importance weights (Kish's formula).

    $$N_\mathrm{eff} = \frac{(\sum_j w_j)^2}{\sum_j w_j^2}
      = \exp\bigl(2\,\mathrm{LSE}(\ell) - \mathrm{LSE}(2\ell)\bigr),\quad \ell_j = \log w_j,$$

    evaluated with log-sum-exp so that log-weights of any magnitude (e.g. $\pm 1000$, typical
    of high-dimensional likelihoods) neither overflow nor underflow. Weights need not be
    normalised. $N_\mathrm{eff} = N$ for equal weights and $1$ when one weight dominates; a
    common resampling trigger is $N_\mathrm{eff} < N/2$.

    **Arguments:**

    - `weights`: `(N,)` log-weights (default) or weights; leading axes are batched over.
      Log-weights may contain `-inf` (zero weight), but not all of them.
    - `log`: `True` if `weights` are log-weights; `False` for non-negative raw weights.

    **Returns:**

    The effective sample size in `[1, N]`, one per leading index.

    **References:** Kong, Liu & Wong (1994), JASA 89, 278-288; Doucet & Johansen (2011),
    "A tutorial on particle filtering and smoothing". DAPPER: `PartFilt` resampling test.

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.primitives import effective_sample_size

    effective_sample_size(jnp.array([-1000.0, -1000.0, -3000.0]))  # 2.0
    ```
    """
    weights = jnp.asarray(weights)
    if weights.ndim < 1 or weights.shape[-1] < 1:
        raise ValueError(
            f"weights must have shape (..., N) with N >= 1 particles on the last axis; got "
            f"{weights.shape}."
        )
    _check_floating(weights, "weights")
    if log:
        # Shifting by the max makes both sums O(1); exp(2 LSE(l) - LSE(2l)) is shift-invariant.
        shift = jax.lax.stop_gradient(jnp.max(weights, axis=-1, keepdims=True))
        centred = weights - shift
        log_sum = jax.scipy.special.logsumexp(centred, axis=-1)
        log_sum_sq = jax.scipy.special.logsumexp(2 * centred, axis=-1)
        return jnp.exp(2 * log_sum - log_sum_sq)
    check_nonnegative(weights, "weights (with log=False)")
    scale = jax.lax.stop_gradient(jnp.max(weights, axis=-1, keepdims=True))
    check_positive(scale, "the largest weight (with log=False)")
    scaled = weights / scale
    return jnp.square(jnp.sum(scaled, axis=-1)) / jnp.sum(jnp.square(scaled), axis=-1)
