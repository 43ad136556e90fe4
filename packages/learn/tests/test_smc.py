"""tempered_smc / adaptive_tempered_smc against quadrature (an asymmetric likelihood) and the
analytic posterior of a conjugate Gaussian problem.

Monte Carlo tolerances are k standard errors; the log-evidence standard deviations quoted
below were measured over 20 seeds with the same settings (scripts kept out of the suite)."""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from filterax.learn import SMCResult, adaptive_tempered_smc, tempered_smc

# ---- an asymmetric 1-d problem: prior N(0, 1) x an asymmetric-Laplace likelihood ----
# log L(x) = log(a c / (a + c)) - a (x - y) for x > y, + c (x - y) for x < y: a proper density
# of y - x, decaying 4x faster on one side, so the posterior is skewed (mean 1.614, sd 0.247
# for y = 1.5) and a sign error in the tempering (blackjax issue #914) would show.
Y_OBS, SLOPE_A, SLOPE_C = 1.5, 1.0 / 0.4, 1.0 / 0.1
LOG_NORM = math.log(SLOPE_A * SLOPE_C / (SLOPE_A + SLOPE_C))


def _asym_loglik(x):
    r = x[0] - Y_OBS
    return LOG_NORM + jnp.where(r > 0.0, -SLOPE_A * r, SLOPE_C * r)


def _std_normal_logprior(x):
    return -0.5 * jnp.sum(x**2) - 0.5 * x.shape[0] * math.log(2.0 * math.pi)


def _quadrature_reference():
    """log Z and the posterior's mean, variance and 4th central moment by scipy quad."""

    def density(x):
        r = x - Y_OBS
        loglik = LOG_NORM + (-SLOPE_A * r if r > 0 else SLOPE_C * r)
        return math.exp(scipy.stats.norm.logpdf(x) + loglik)

    def integral(f):
        # split at the kink so quad sees two smooth pieces
        return sum(
            scipy.integrate.quad(f, *ab, epsabs=1e-13)[0]
            for ab in ((-np.inf, Y_OBS), (Y_OBS, np.inf))
        )

    z = integral(density)
    mean = integral(lambda x: x * density(x)) / z
    var = integral(lambda x: (x - mean) ** 2 * density(x)) / z
    mu4 = integral(lambda x: (x - mean) ** 4 * density(x)) / z
    return math.log(z), mean, var, mu4


ASYM_REF = _quadrature_reference()


def _weighted_moments(result):
    w = jnp.exp(result.log_weights)
    mean = w @ result.particles
    dev = result.particles - mean[None, :]
    return np.asarray(mean), np.asarray((w[:, None] * dev).T @ dev)


@partial(jax.jit, static_argnames=("n", "target_ess"))
def _asym_adaptive(key, n, target_ess):
    k0, k1 = jax.random.split(key)
    x0 = jax.random.normal(k0, (n, 1))
    return adaptive_tempered_smc(
        k1, _std_normal_logprior, _asym_loglik, x0, target_ess=target_ess, max_steps=40
    )


SCHEDULE = jnp.linspace(0.0, 1.0, 21)[1:] ** 3


@partial(jax.jit, static_argnames=("n",))
def _asym_fixed(key, n):
    k0, k1 = jax.random.split(key)
    x0 = jax.random.normal(k0, (n, 1))
    return tempered_smc(k1, _std_normal_logprior, _asym_loglik, x0, schedule=SCHEDULE)


def _check_asym_moments(result, k=5.0):
    log_z, mean, var, mu4 = ASYM_REF
    m, c = _weighted_moments(result)
    ess = float(result.ess[result.n_steps - 1])
    # k standard errors of a (weighted) sample of effective size ESS: sd/sqrt(ESS) for the
    # mean, sqrt((mu4 - var^2)/ESS) for the variance
    assert abs(m[0] - mean) <= k * math.sqrt(var / ess)
    assert abs(c[0, 0] - var) <= k * math.sqrt((mu4 - var**2) / ess)


def test_adaptive_asymmetric_log_evidence_within_0p02_of_quadrature(getkey):
    # N = 32768 with target ESS 0.9 (10 steps): sd(log Z_hat) = 0.0056 over 20 seeds (bias
    # 3e-4), so the 0.02 is 3.6 SE. Fewer particles cannot promise 0.02: the
    # variance scales as (number of steps)/N.
    result = _asym_adaptive(jax.random.key(3), 32768, 0.9)
    assert isinstance(result, SMCResult)
    assert bool(result.converged) and bool(result.finite)
    n = int(result.n_steps)
    assert 2 <= n < 40
    temps = np.asarray(result.temperatures)
    assert temps[n - 1] == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(temps[:n]) > 0) and np.all(np.isnan(temps[n:]))
    # the adaptive rule holds the incremental ESS at the target (bisection tolerance)
    assert np.all(np.asarray(result.ess[: n - 1]) > 0.85 * 32768)
    assert abs(float(result.log_evidence) - ASYM_REF[0]) <= 0.02
    increments = np.asarray(result.log_evidence_increments)
    assert float(result.log_evidence) == pytest.approx(float(np.sum(increments[:n])))
    _check_asym_moments(result)
    # the random-walk scale 2.38/sqrt(d) gives the textbook acceptance for d = 1 (~0.44)
    assert 0.3 < float(np.nanmean(result.acceptance)) < 0.6


def test_fixed_schedule_asymmetric_against_quadrature():
    # N = 8192, 20 steps lambda_k = (k/20)^3: sd(log Z_hat) = 0.009 over 20 seeds -> 0.04 is
    # 4.4 SE.
    result = _asym_fixed(jax.random.key(5), 8192)
    assert bool(result.converged) and bool(result.finite)
    assert int(result.n_steps) == 20
    np.testing.assert_array_equal(np.asarray(result.temperatures), np.asarray(SCHEDULE))
    assert abs(float(result.log_evidence) - ASYM_REF[0]) <= 0.04
    _check_asym_moments(result)
    np.testing.assert_allclose(float(jax.nn.logsumexp(result.log_weights)), 0.0, atol=1e-12)


def test_same_key_same_result():
    # same compiled program as the fixed-schedule test (N = 8192): no extra compilation
    a = _asym_fixed(jax.random.key(7), 8192)
    b = _asym_fixed(jax.random.key(7), 8192)
    c = _asym_fixed(jax.random.key(8), 8192)
    np.testing.assert_array_equal(np.asarray(a.particles), np.asarray(b.particles))
    np.testing.assert_array_equal(np.asarray(a.log_weights), np.asarray(b.log_weights))
    assert float(a.log_evidence) == float(b.log_evidence)
    assert float(a.log_evidence) != float(c.log_evidence)


# ---- a 2-d conjugate Gaussian: exact posterior and evidence ----

M0 = np.array([0.5, -1.0])
P0 = np.array([[1.0, 0.3], [0.3, 0.5]])
H = np.array([[1.0, 2.0], [0.0, 1.0]])
R = np.diag([0.2, 0.1])
Y2 = np.array([1.0, 0.3])


def _gauss_reference():
    s = H @ P0 @ H.T + R
    gain = P0 @ H.T @ np.linalg.inv(s)
    log_z = scipy.stats.multivariate_normal(H @ M0, s).logpdf(Y2)
    return log_z, M0 + gain @ (Y2 - H @ M0), P0 - gain @ H @ P0


P0_INV, R_INV = np.linalg.inv(P0), np.linalg.inv(R)
LOG_NORM_P0 = -0.5 * np.linalg.slogdet(2.0 * np.pi * P0)[1]
LOG_NORM_R = -0.5 * np.linalg.slogdet(2.0 * np.pi * R)[1]


# plain quadratic forms with precomputed inverses: the same densities as
# multivariate_normal.logpdf, cheaper to compile under HMC's gradient
def _gauss_logprior(x):
    r = x - M0
    return LOG_NORM_P0 - 0.5 * r @ P0_INV @ r


def _gauss_loglik(x):
    r = Y2 - H @ x
    return LOG_NORM_R - 0.5 * r @ R_INV @ r


@jax.jit
def _gauss_hmc(key):
    k0, k1 = jax.random.split(key)
    x0 = M0[None, :] + jax.random.normal(k0, (4096, 2)) @ np.linalg.cholesky(P0).T
    return adaptive_tempered_smc(
        k1, _gauss_logprior, _gauss_loglik, x0, target_ess=0.8, mcmc="hmc", n_mcmc_steps=5
    )


def test_adaptive_hmc_conjugate_gaussian_against_analytic_posterior():
    log_z, mean, cov = _gauss_reference()
    result = _gauss_hmc(jax.random.key(11))
    assert bool(result.converged) and bool(result.finite)
    # N = 4096, target ESS 0.8 (8 steps): sd(log Z_hat) = 0.026 over 20 seeds -> 0.1 is 3.8 SE
    assert abs(float(result.log_evidence) - log_z) <= 0.1
    m, c = _weighted_moments(result)
    ess = float(result.ess[result.n_steps - 1])
    # 5 SE: sd_i/sqrt(ESS) for the mean, sqrt((P_ii P_jj + P_ij^2)/ESS) for a Gaussian's
    # sample covariance entries
    np.testing.assert_array_less(np.abs(m - mean), 5.0 * np.sqrt(np.diag(cov) / ess))
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / ess)
    np.testing.assert_array_less(np.abs(c - cov), 5.0 * se_cov)
    assert 0.5 < float(np.nanmean(result.acceptance)) <= 1.0


# ---- failures are loud ----


def test_zero_likelihood_everywhere_raises():
    # every particle has zero likelihood: log Z_hat = -inf must not come back as a number
    x0 = jax.random.normal(jax.random.key(0), (64, 1))
    with pytest.raises(Exception, match="not finite"):
        out = tempered_smc(
            jax.random.key(1),
            _std_normal_logprior,
            lambda x: jnp.asarray(-jnp.inf, x.dtype),
            x0,
            schedule=jnp.array([0.5, 1.0]),
            n_mcmc_steps=1,
        )
        jax.block_until_ready(out.log_evidence)


def test_max_steps_exhausted_is_reported():
    # throw=False reports an unfinished adaptive schedule instead of raising
    x0 = jax.random.normal(jax.random.key(0), (256, 1))
    sharp = lambda x: -0.5 * jnp.sum((x - 1.0) ** 2) / 1e-4  # noqa: E731
    out = adaptive_tempered_smc(
        jax.random.key(1),
        _std_normal_logprior,
        sharp,
        x0,
        target_ess=0.99,
        max_steps=2,
        n_mcmc_steps=1,
        throw=False,
    )
    assert not bool(out.converged) and int(out.n_steps) == 2
    assert bool(out.finite) and float(out.temperatures[1]) < 1.0


def test_nan_log_likelihood_in_a_step_is_reported_not_dropped():
    # regression: the adaptive buffers are NaN-padded; a NaN increment of a step that ran must
    # make the result non-finite, not vanish from the sum
    x0 = jax.random.normal(jax.random.key(0), (64, 1))
    out = adaptive_tempered_smc(
        jax.random.key(1),
        _std_normal_logprior,
        lambda x: jnp.where(x[0] > 0.0, jnp.nan, -0.5 * x[0] ** 2),
        x0,
        max_steps=3,
        n_mcmc_steps=1,
        throw=False,
    )
    assert not bool(out.finite)
    assert not np.isfinite(float(out.log_evidence))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(initial_particles=np.zeros(10)), r"\(N, d\)"),
        (dict(initial_particles=np.zeros((1, 2))), "N >= 2"),
        (dict(initial_particles=np.zeros((5, 2), int)), "floating"),
        (dict(log_likelihood=lambda x: x), "scalar"),
        (dict(mcmc="nuts"), "mcmc must be"),
        (dict(resampling="soft"), "resampling must be"),
        (dict(n_mcmc_steps=0), "n_mcmc_steps"),
        (dict(step_scale=-1.0), "step_scale"),
        (dict(schedule=jnp.array([0.5, 0.9])), "end at exactly"),
        (dict(schedule=jnp.array([0.5, 0.3, 1.0])), "strictly increasing"),
        (dict(schedule=jnp.array([0.0, 0.5, 1.0])), "strictly increasing"),
    ],
)
def test_bad_input_fails_early(kwargs, match):
    args = dict(
        log_prior=_std_normal_logprior,
        log_likelihood=_asym_loglik,
        initial_particles=np.zeros((8, 2)),
        schedule=jnp.array([0.5, 1.0]),
    )
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        tempered_smc(
            jax.random.key(0),
            args.pop("log_prior"),
            args.pop("log_likelihood"),
            args.pop("initial_particles"),
            **args,
        )


@pytest.mark.parametrize(("target_ess", "max_steps"), [(1.0, 10), (0.0, 10), (0.5, 0)])
def test_adaptive_bad_options(target_ess, max_steps):
    with pytest.raises(ValueError, match="target_ess|max_steps"):
        adaptive_tempered_smc(
            jax.random.key(0),
            _std_normal_logprior,
            _asym_loglik,
            np.zeros((8, 1)),
            target_ess=target_ess,
            max_steps=max_steps,
        )
