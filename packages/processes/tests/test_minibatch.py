"""Mini-batching: cycling order, batch contents (per noise structure), tracing, errors, and the
driver updating with the right batch each iteration."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import filterax.primitives as fxp
from filterax.processes import EKI, FixedScheduler, MiniBatcher, calibrate

N_Y = 12
BATCHES = np.split(np.arange(N_Y), 4)


def _obs():
    return jnp.arange(N_Y, dtype=float) * 0.5 - 1.0


def test_fixed_order_cycles_through_batches():
    batcher = MiniBatcher(_obs(), 0.1, BATCHES)
    order = [int(batcher.batch_index(n)) for n in range(12)]
    assert order == [0, 1, 2, 3] * 3
    assert batcher.n_batches == 4 and batcher.batch_size == 3


def test_shuffled_order_is_a_permutation_per_epoch(getkey):
    key = getkey()
    batcher = MiniBatcher(_obs(), 0.1, BATCHES, shuffle=True, key=key)
    order = np.array([int(batcher.batch_index(n)) for n in range(4 * 8)]).reshape(8, 4)
    for epoch in order:
        assert sorted(epoch.tolist()) == [0, 1, 2, 3]
    # 8 epochs of 4! = 24 orders: all identical has probability 24^-7; the order changes.
    assert len({tuple(e) for e in order}) > 1
    # Reproducible from the key, and a different key gives a different sequence.
    again = MiniBatcher(_obs(), 0.1, BATCHES, shuffle=True, key=key)
    assert [int(again.batch_index(n)) for n in range(32)] == order.ravel().tolist()
    other = MiniBatcher(_obs(), 0.1, BATCHES, shuffle=True, key=getkey())
    assert [int(other.batch_index(n)) for n in range(32)] != order.ravel().tolist()


def _noises(rng):
    cov = fxp.dense_noise(np.cov(rng.standard_normal((N_Y, 3 * N_Y))))
    return {
        "diagonal": fxp.diagonal_noise(jnp.asarray(rng.uniform(0.5, 2.0, N_Y))),
        "dense": cov,
        "low_rank": fxp.low_rank_noise(
            jnp.asarray(rng.standard_normal((N_Y, 2))), jnp.asarray(rng.uniform(0.5, 1.0, N_Y))
        ),
    }


@pytest.mark.parametrize("structure", ["diagonal", "dense", "low_rank"])
def test_batch_is_the_sub_problem(structure):
    noise = _noises(np.random.default_rng(0))[structure]
    batches = [[0, 5, 7], [1, 2, 11], [3, 4, 6], [8, 9, 10]]
    batcher = MiniBatcher(_obs(), noise, batches)
    full = np.asarray(noise.as_matrix())
    for n in range(4):
        idx, y_b, noise_b = batcher.batch(n)
        assert idx.tolist() == batches[n]
        np.testing.assert_array_equal(y_b, np.asarray(_obs())[batches[n]])
        # Structure is kept, so batch gains cost what a full gain with that structure costs.
        assert fxp.noise_structure(noise_b) == structure
        np.testing.assert_allclose(
            noise_b.as_matrix(), full[np.ix_(batches[n], batches[n])], rtol=1e-14
        )


def test_batch_is_traceable(getkey):
    batcher = MiniBatcher(_obs(), jnp.linspace(0.1, 1.2, N_Y), BATCHES, shuffle=True, key=getkey())

    def body(carry, n):
        idx, y_b, noise_b = batcher.batch(n)
        return carry, (batcher.batch_index(n), y_b, lx.diagonal(noise_b))

    _, (b, y, d) = jax.lax.scan(body, None, jnp.arange(9))
    for n in range(9):
        idx, y_b, noise_b = batcher.batch(n)
        assert int(b[n]) == int(batcher.batch_index(n))
        np.testing.assert_array_equal(y[n], y_b)
        np.testing.assert_array_equal(d[n], lx.diagonal(noise_b))


@pytest.mark.parametrize(
    "batches,kwargs,match",
    [
        ([[0, 1], [2, 3, 4]], {}, "same non-zero length"),
        ([[0, 1], [2, 12]], {}, r"\[0, 12\)"),
        ([[0, 1], [2, 3]], {"shuffle": True}, "key"),
    ],
)
def test_bad_batches_are_rejected(batches, kwargs, match):
    with pytest.raises(ValueError, match=match):
        MiniBatcher(_obs(), 0.1, batches, **kwargs)


def test_calibrate_updates_with_each_iterations_batch(getkey):
    # Reference: the same process driven by hand, passing each batch to update.
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.standard_normal((N_Y, 3)))
    y = a @ jnp.array([1.0, -2.0, 0.5]) + 0.05 * jnp.asarray(rng.standard_normal(N_Y))
    noise = jnp.full(N_Y, 0.05**2)
    batcher = MiniBatcher(y, noise, BATCHES, shuffle=True, key=getkey())
    eki = EKI(scheduler=FixedScheduler(0.5), failure_handler="ignore")
    ens = jax.random.normal(getkey(), (10, 3))
    key = getkey()

    def forward(theta):
        return a @ theta

    result = calibrate(eki, forward, ens, None, None, batches=batcher, n_iterations=6, key=key)

    @eqx.filter_jit
    def step(state, n):
        idx, y_b, noise_b = batcher.batch(n)
        g = jax.vmap(forward)(eki.particles(state))[:, idx]
        return eki.update(state, g, obs=y_b, obs_noise=noise_b), g

    _, y0, noise0 = batcher.batch(0)
    state = eki.init(ens, y0, noise0, key=key)
    for n in range(6):
        assert int(result.history.batch[n]) == int(batcher.batch_index(n))
        state, g = step(state, jnp.asarray(n))  # traced n: one compilation
        np.testing.assert_allclose(result.history.outputs[n], g, rtol=1e-12, atol=1e-12)
    # Same key, same batches, same arithmetic up to XLA fusion round-off.
    np.testing.assert_allclose(result.ensemble, state.ensemble, rtol=1e-10, atol=1e-10)
    assert result.history.outputs.shape == (6, 10, 3)
