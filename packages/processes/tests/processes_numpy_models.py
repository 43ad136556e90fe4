"""NumPy-only forward models for the executor tests (the kind a black-box simulator wraps).

Module-level functions so ``ProcessPoolExecutor`` workers can unpickle them: the tests put this
directory on ``sys.path`` and import the module by this (unique) name, which spawned workers
inherit. Nothing here imports JAX, so workers start fast.
"""

import time

import numpy as np

T = np.linspace(0.0, 2.0, 8)


def decay(theta):
    """``G(theta)_i = theta_0 exp(-theta_1 t_i) + theta_2 t_i`` (same formula as the JAX test
    model)."""
    theta = np.asarray(theta, dtype=np.float64)
    return theta[0] * np.exp(-theta[1] * T) + theta[2] * T


def decay_raising_above(theta, threshold=1.5):
    """`decay`, but the "simulator crashes" when ``theta_0 > threshold``."""
    if theta[0] > threshold:
        raise RuntimeError(f"solver diverged for theta_0 = {theta[0]:.3f}")
    return decay(theta)


def decay_nan_above(theta, threshold=1.5):
    """`decay`, but returns NaN output when ``theta_0 > threshold``."""
    out = decay(theta)
    if theta[0] > threshold:
        out[3] = np.nan
    return out


def always_raises(theta):
    raise RuntimeError(f"license server unreachable (theta_0 = {theta[0]:.3f})")


def wrong_shape(theta):
    return np.zeros(3)


def slow_first_member(theta):
    # The member with the smallest theta_0 (-10 in the test) hangs past the timeout.
    if theta[0] < -5:
        time.sleep(1.0)
    return decay(theta)
