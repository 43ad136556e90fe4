"""The one missing-data rule: a NaN or ±inf observation entry is not observed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import presets

KERNELS = {
    "ETKF": ff.ETKF(),
    "StochasticEnKF": ff.StochasticEnKF(),
    "EnSRF": ff.EnSRF(),
    "EnSRF_Serial": ff.EnSRF_Serial(),
    "DEnKF": ff.DEnKF(),
    "ESTKF": ff.ESTKF(),
    "EnKF_N": ff.EnKF_N(),
    "LETKF": ff.LETKF(radius=6.0),
    "KalmanFilter.analysis": ff.KalmanFilter(),
}


def _data():
    ssm = presets.lorenz96_sakov2008()
    xp = ssm.simulate(jax.random.key(0), 12)
    e0 = ssm.initial_ensemble(jax.random.key(1), 10)
    idx = (jnp.array([2, 5, 5, 9]), jnp.array([3, 0, 17, 39]))
    return ssm, xp, e0, idx


@pytest.mark.parametrize("name", list(KERNELS))
def test_an_infinite_observation_is_missing_like_nan(name):
    # Regression: one inf observation turned every analysis to NaN and froze the run (50 of 60
    # cycles lost). Now +inf / -inf entries get zero weight exactly as NaN entries do.
    ssm, xp, e0, idx = _data()
    method = ff.EnsembleFilter(KERNELS[name], inflator=fxp.AdaptiveInflator(1.0, 0.01))
    signs = jnp.array([1.0, -1.0, 1.0, -1.0])
    with_inf = xp.observations.at[idx].set(signs * jnp.inf)
    with_nan = xp.observations.at[idx].set(jnp.nan)
    kwargs = dict(key=jax.random.key(2), divergence_threshold=50.0)
    a = ff.run(method, ssm, e0, with_inf, xp.times, **kwargs)
    b = ff.run(method, ssm, e0, with_nan, xp.times, **kwargs)
    assert int(a.status) == ff.RunResult.OK
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_the_kalman_filter_treats_infinite_observations_as_missing():
    ssm, xp, _, idx = _data()
    kf = ff.KalmanFilter()
    args = (ssm.x0_mean, ssm.x0_cov)
    rest = (xp.times, ssm.dynamics, ssm.obs_op, ssm.obs_noise)
    a = kf.filter(*args, xp.observations.at[idx].set(jnp.inf), *rest)
    b = kf.filter(*args, xp.observations.at[idx].set(jnp.nan), *rest)
    assert np.all(np.isfinite(a.mean))
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.log_likelihood, b.log_likelihood)


def test_the_observation_mask_is_finiteness():
    mask = fxp.observation_mask(jnp.array([1.0, jnp.nan, jnp.inf, -jnp.inf, 0.0]))
    np.testing.assert_array_equal(mask, [True, False, False, False, True])
