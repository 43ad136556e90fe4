"""`filterax.processes.optax`: the transformations equal the standalone processes (same key,
same iterates), compose with `optax.chain`, and train hybrid models with `optax.multi_transform`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import filterax.processes.optax as fxo
from filterax.processes import EKI, EKS, UKI, FixedScheduler, MultiplicativeInflation

# Same arithmetic compiled in two programs (optax update vs standalone step): XLA fusion
# round-off only, ~1e-15 per step, mildly amplified by the Kalman gain.
ALGEBRAIC = dict(rtol=1e-10, atol=1e-10)
A = jnp.asarray(np.random.default_rng(0).standard_normal((6, 3)))
TRUTH = {"a": jnp.array([1.0, -0.5]), "b": jnp.asarray(0.3)}
N_E = 8


def forward(params):
    theta = jnp.concatenate([params["a"], params["b"][None]])
    return jnp.tanh(A @ theta)


OBS = forward(TRUTH)
NOISE = jnp.full(6, 1e-3)
PARAMS0 = {"a": jnp.zeros(2), "b": jnp.asarray(0.0)}


@eqx.filter_jit
def _opt_step(tx, params, opt_state):
    updates, opt_state = tx.update(params, opt_state, params)  # the gradient slot is unused
    return optax.apply_updates(params, updates), opt_state


@eqx.filter_jit
def _process_step(process, unravel, state):
    outputs = jax.vmap(lambda th: forward(unravel(th)))(process.particles(state))
    return process.update(state, outputs)


def _standalone(process, initial, key, n_steps):
    """The documented convention: init_key, process_key = split(key); init from `initial`."""
    _, process_key = jax.random.split(key)
    _, unravel = ravel_pytree(PARAMS0)
    state = process.init(initial, OBS, NOISE, key=process_key)
    states = [state]
    for _ in range(n_steps):
        state = _process_step(process, jax.tree_util.Partial(unravel), state)
        states.append(state)
    return states


def _run_optax(tx, n_steps):
    params, opt_state = PARAMS0, tx.init(PARAMS0)
    trajectory = [(params, opt_state)]
    for _ in range(n_steps):
        params, opt_state = _opt_step(tx, params, opt_state)
        trajectory.append((params, opt_state))
    return trajectory


def _initial_ensemble(key, init_std):
    init_key, _ = jax.random.split(key)
    flat, _ = ravel_pytree(PARAMS0)
    return flat[None, :] + init_std * jax.random.normal(init_key, (N_E, flat.shape[0]))


@pytest.mark.parametrize("method", ["eki", "eks"])
def test_ensemble_transforms_equal_the_standalone_process(getkey, method):
    key = getkey()
    if method == "eki":
        process = EKI(scheduler=FixedScheduler(0.5), failure_handler="ignore")
        tx = fxo.eki(forward, OBS, NOISE, n_ensemble=N_E, key=key, init_std=0.5, process=process)
    else:
        # The default EKS prior: centred on the initial parameters, variance init_std^2.
        process = EKS(jnp.zeros(3), jnp.full(3, 0.25))
        tx = fxo.eks(forward, OBS, NOISE, n_ensemble=N_E, key=key, init_std=0.5)
    trajectory = _run_optax(tx, 4)
    states = _standalone(process, _initial_ensemble(key, 0.5), key, 4)
    for (params, opt_state), state in zip(trajectory, states, strict=True):
        np.testing.assert_allclose(opt_state.process_state.ensemble, state.ensemble, **ALGEBRAIC)
        if int(state.iteration) > 0:
            # After an update the parameters sit at the new ensemble mean.
            flat, _ = ravel_pytree(params)
            np.testing.assert_allclose(flat, process.mean(state), **ALGEBRAIC)
    # The transformation made progress on the data misfit (not a no-op).
    assert float(jnp.sum((forward(trajectory[-1][0]) - OBS) ** 2)) < 0.5 * float(
        jnp.sum((forward(PARAMS0) - OBS) ** 2)
    )


def test_uki_transform_equals_standalone_and_updates_the_covariance(getkey):
    tx = fxo.uki(forward, OBS, NOISE, init_std=0.5)
    process = UKI(jnp.zeros(3), 0.25 * jnp.eye(3))
    trajectory = _run_optax(tx, 4)
    states = _standalone(process, (jnp.zeros(3), 0.25 * jnp.eye(3)), jax.random.key(0), 4)
    for (params, opt_state), state in zip(trajectory[1:], states[1:], strict=True):
        flat, _ = ravel_pytree(params)
        np.testing.assert_allclose(flat, process.mean(state), **ALGEBRAIC)
        np.testing.assert_allclose(
            process.covariance(opt_state.process_state), process.covariance(state), **ALGEBRAIC
        )
    # Parametric carry: both moments move (the covariance contracts from 0.25 I).
    cov = np.asarray(process.covariance(trajectory[-1][1].process_state))
    assert np.trace(cov) < 0.5 * 0.75


def test_chain_scales_the_ensemble_step(getkey):
    key = getkey()
    process = EKI(scheduler=FixedScheduler(0.5), failure_handler="ignore")
    eki = fxo.eki(forward, OBS, NOISE, n_ensemble=N_E, key=key, init_std=0.5, process=process)
    tx = optax.chain(eki, optax.scale(0.5))
    trajectory = _run_optax(tx, 3)
    states = _standalone(process, _initial_ensemble(key, 0.5), key, 3)
    # The ensemble does not depend on the parameters, so it evolves as without the chain; the
    # parameters move half-way to each new mean: p_{n+1} = p_n + (m_{n+1} - p_n) / 2.
    for n in range(3):
        p_n, _ = ravel_pytree(trajectory[n][0])
        p_next, _ = ravel_pytree(trajectory[n + 1][0])
        ensemble = trajectory[n + 1][1][0].process_state.ensemble
        np.testing.assert_allclose(ensemble, states[n + 1].ensemble, **ALGEBRAIC)
        expected = p_n + 0.5 * (process.mean(states[n + 1]) - p_n)
        np.testing.assert_allclose(p_next, expected, **ALGEBRAIC)


def test_hybrid_multi_transform_trains_network_and_physics(getkey):
    # y(x) = net(x) + physics(x): a linear "network" w0 + w1 x trained by SGD on the squared
    # error, plus a cos(k x) calibrated by EKI, which sees the current network weights through
    # an extra keyword argument of `update`. Multiplicative inflation keeps the EKI ensemble
    # from collapsing while its target moves with the network (EKP's advice for
    # non-stationary problems).
    x = jnp.linspace(-1.0, 1.0, 24)
    truth = {"net": jnp.array([0.5, 0.3]), "phys": jnp.array([2.0, 3.0])}

    def model(params, net):
        return net[0] + net[1] * x + params["phys"][0] * jnp.cos(params["phys"][1] * x)

    y = model(truth, truth["net"])

    def physics_forward(params, *, net):
        return model(params, net)  # params["net"] is an optax.MaskedNode here

    def loss(params):
        return jnp.mean((model(params, params["net"]) - y) ** 2)

    process = EKI(
        scheduler=FixedScheduler(0.5),
        failure_handler="ignore",
        inflation=MultiplicativeInflation(1.0),
    )
    eki = fxo.eki(physics_forward, y, 1e-3, n_ensemble=10, key=getkey(), init_std=0.3,
                  process=process)  # fmt: skip
    tx = optax.multi_transform({"sgd": optax.sgd(0.5), "eki": eki}, {"net": "sgd", "phys": "eki"})
    params = {"net": jnp.zeros(2), "phys": jnp.array([1.5, 2.7])}
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params, net=params["net"])
        return optax.apply_updates(params, updates), opt_state

    initial_loss = float(loss(params))
    for _ in range(100):
        params, opt_state = step(params, opt_state)
    # Deterministic given the key; observed ~2e-5 relative loss, ~5e-3 parameter error.
    assert float(loss(params)) < 1e-3 * initial_loss
    # Both groups moved to the truth: SGD trained the network, EKI the physics.
    np.testing.assert_allclose(params["net"], truth["net"], atol=0.03)
    np.testing.assert_allclose(params["phys"], truth["phys"], atol=0.03)
    # The physics leaves' ensemble lives in the EKI group's state.
    eki_state = opt_state.inner_states["eki"].inner_state
    assert eki_state.process_state.ensemble.shape == (10, 2)


def test_bad_use_is_rejected(getkey):
    tx = fxo.eki(forward, OBS, NOISE, n_ensemble=N_E, key=getkey())
    state = tx.init(PARAMS0)
    with pytest.raises(ValueError, match="current parameters"):
        tx.update(PARAMS0, state)
    with pytest.raises(ValueError, match="at least 2"):
        fxo.eki(forward, OBS, NOISE, n_ensemble=1, key=getkey())
    with pytest.raises(TypeError, match="EKI"):
        fxo.eki(forward, OBS, NOISE, n_ensemble=4, key=getkey(), process=UKI(jnp.zeros(3), 1.0))
    with pytest.raises(ValueError, match="not both"):
        fxo.eks(forward, OBS, NOISE, n_ensemble=4, key=getkey(), prior_mean=jnp.zeros(3),
                process=EKS(jnp.zeros(3), 1.0))  # fmt: skip
