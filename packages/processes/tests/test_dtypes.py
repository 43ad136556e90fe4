"""Process states keep one structure and dtype through updates, under x32 and x64.

Drivers carry `ProcessState` through `lax.scan`/`lax.while_loop`, which require the carry's
dtypes to be identical before and after a step. A counter built with ``jnp.sum`` of a bool mask
is int64 under x64 but int32 under x32, while `init` builds int32: the update must cast
(`n_failed` regression).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import filterax.processes as fpr

N_E, N_P, N_Y = 8, 3, 5


def processes(dtype):
    m0, c0 = jnp.zeros(N_P, dtype), jnp.ones(N_P, dtype)
    return {
        "EKI": fpr.EKI(),
        "EKI-fixed": fpr.EKI(scheduler=fpr.FixedScheduler(0.5)),
        "EKI-sqrt": fpr.EKI(stochastic=False),
        "ETKI": fpr.ETKI(),
        "GNKI": fpr.GNKI(m0, c0),
        "TEKI": fpr.TEKI(m0, c0),
        "EKS": fpr.EKS(m0, c0),
        "SparseInversion": fpr.SparseInversion(l1_weight=1.0),
        "UKI": fpr.UKI(m0, c0, impose_prior=True),
    }


def dtypes(tree):
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(p): jnp.result_type(x) for p, x in leaves if hasattr(x, "dtype")}


def start(name, process, dtype):
    key = jax.random.key(0)
    y = jnp.linspace(0.5, 1.5, N_Y, dtype=dtype)
    if name == "UKI":
        return process.init(None, y, 0.1)
    x = jax.random.normal(key, (N_E, N_P), dtype)
    return process.init(x, y, 0.1, key=key)


def forward(particles):
    a = jnp.asarray(np.linspace(-1.0, 1.0, N_Y * N_P).reshape(N_Y, N_P), particles.dtype)
    out = particles @ a.T
    # member 1 fails (NaN output): exercises the failure path that counts n_failed
    return out.at[1].set(jnp.nan)


def check_update_keeps_dtypes(name, process, dtype):
    state = start(name, process, dtype)
    new = process.update(state, forward(process.particles(state)))
    assert dtypes(new) == dtypes(state)
    assert new.n_failed.dtype == state.n_failed.dtype == jnp.int32
    assert new.iteration.dtype == jnp.int32
    assert int(new.n_failed) == 1
    assert new.ensemble.dtype == dtype

    # A plain lax.scan of `update` (no driver-side casting) must accept the carry.
    def body(s, _):
        return process.update(s, forward(process.particles(s))), s.n_failed

    final, counts = jax.jit(lambda s: jax.lax.scan(body, s, None, length=3))(state)
    assert final.n_failed.dtype == jnp.int32 and counts.dtype == jnp.int32
    assert int(final.iteration) == 3


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", list(processes(jnp.float64)))
def test_update_keeps_dtypes_under_x64(name, dtype):
    # conftest enables x64: jnp.sum(bool) is int64 here, the case that used to break.
    assert jax.config.jax_enable_x64
    check_update_keeps_dtypes(name, processes(dtype)[name], dtype)


@pytest.mark.parametrize("name", list(processes(jnp.float32)))
def test_update_keeps_dtypes_under_x32(name):
    with jax.enable_x64(False):
        check_update_keeps_dtypes(name, processes(jnp.float32)[name], jnp.float32)


def test_n_failed_helper_is_int32_under_both_modes():
    g = jnp.ones((4, 2)).at[0, 1].set(jnp.inf)
    assert fpr.n_failed(g).dtype == jnp.int32 and int(fpr.n_failed(g)) == 1
    with jax.enable_x64(False):
        g32 = jnp.ones((4, 2)).at[0, 1].set(jnp.inf)
        assert fpr.n_failed(g32).dtype == jnp.int32


def test_calibrate_history_counts_are_int32():
    # The history stacks per-iteration n_failed; its dtype must not depend on x64.
    a = jnp.asarray([[1.0, 0.5], [0.0, 1.0], [1.0, 1.0]])
    ens = jax.random.normal(jax.random.key(0), (6, 2))
    res = fpr.calibrate(
        fpr.EKI(scheduler=fpr.FixedScheduler(0.5)),
        lambda th: a @ th,
        ens,
        jnp.ones(3),
        0.1,
        n_iterations=2,
        key=jax.random.key(1),
    )
    assert res.history.n_failed.dtype == jnp.int32
    assert res.state.n_failed.dtype == jnp.int32
