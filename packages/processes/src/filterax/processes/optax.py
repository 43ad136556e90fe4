"""Ensemble Kalman processes as optax gradient transformations.

``filterax.processes.optax.eki(forward_fn, obs, obs_noise, n_ensemble=..., key=...)`` returns an
``optax.GradientTransformationExtraArgs``. Its state holds the whole ensemble (a
`ProcessState`); ``update(grads, state, params)`` ignores ``grads``, evaluates ``forward_fn`` on
every member (vmapped), applies one process update and returns the increment
``mean_new - params``, so ``optax.apply_updates`` moves the parameters to the new ensemble
mean. The transformations compose like any other: ``optax.chain`` (clipping, scaling on top of
the ensemble step) and ``optax.partition`` / ``optax.multi_transform`` (SGD on a network's
weights, EKI on the physical parameters of the same pytree).

Extra keyword arguments given to ``update`` are passed on to ``forward_fn`` (``optax.chain`` and
``optax.multi_transform`` forward them): a hybrid model gives the current network weights to
the physics forward model this way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import PRNGKeyArray, PyTree

from ._calibrate import _strengthen
from ._checks import check_key
from ._eki import EKI
from ._eks import EKS
from ._uki import UKI

__all__ = ["ProcessTransformState", "eki", "eks", "process_transform", "uki"]


class ProcessTransformState(NamedTuple):
    """The optimiser state of an ensemble Kalman transformation.

    **Fields:**

    - `process_state`: the `ProcessState` (the ensemble, or UKI's mean and covariance).
    - `anchor`: the flattened parameters given to ``init`` (the centre of the default prior of
        `eks` and `uki`).
    - `std`: the flattened initial standard deviations.
    """

    process_state: PyTree
    anchor: jax.Array
    std: jax.Array


def _flat_std(init_std: Any, params: PyTree, n_params: int, dtype) -> jax.Array:
    if isinstance(init_std, int | float) or jnp.ndim(init_std) == 0:
        return jnp.full((n_params,), init_std, dtype=dtype)
    if isinstance(init_std, jax.Array | jnp.ndarray) and jnp.shape(init_std) == (n_params,):
        return jnp.asarray(init_std, dtype=dtype)
    flat, _ = ravel_pytree(
        jax.tree.map(lambda p, s: jnp.broadcast_to(jnp.asarray(s), jnp.shape(p)), params, init_std)
    )
    return flat.astype(dtype)


def _mark_failures(outputs: jax.Array) -> jax.Array:
    ok = jnp.all(jnp.isfinite(outputs), axis=1, keepdims=True)
    return jnp.where(ok, outputs, jnp.nan)


def process_transform(
    make_process: Callable[[jax.Array, jax.Array], Any],
    forward_fn: Callable[..., Any],
    obs: Any,
    obs_noise: Any,
    *,
    make_initial: Callable[[PRNGKeyArray, jax.Array, jax.Array], Any],
    key: PRNGKeyArray,
    init_std: Any = 1.0,
) -> optax.GradientTransformationExtraArgs:
    """Wrap an ensemble Kalman process as an optax transformation (the engine of `eki` etc.).

    ``init(params)`` flattens the parameter pytree (``jax.flatten_util.ravel_pytree``) and
    starts the process; ``update(grads, state, params, **extra)`` ignores ``grads``,
    evaluates ``forward_fn`` at every member (unflattened to the parameter structure), takes
    one ``process.update`` and returns ``unravel(process.mean(new) - flat(params))``.

    **Arguments:**

    - `make_process`: ``(anchor, std) -> process``, both flat ``(N_p,)``: the initial
        parameters and standard deviations (e.g. an `EKS` whose prior is centred on them).
    - `forward_fn`: ``(params, **extra) -> (N_y,)``, a JAX function of ONE parameter pytree
        with the structure the transformation sees (inside ``optax.multi_transform`` the
        leaves of other groups are ``optax.MaskedNode()``); ``extra`` are the keyword
        arguments given to ``update``.
    - `obs`, `obs_noise`: ``y`` and ``Gamma``.
    - `make_initial`: ``(init_key, anchor, std) -> initial``, what ``process.init`` takes.
    - `key`: split as ``init_key, process_key = jax.random.split(key)``; ``process_key`` goes
        to ``process.init``.
    - `init_std`: standard deviation around the initial parameters: a scalar, an ``(N_p,)``
        vector (flattened order) or a pytree like the parameters.

    **Returns:** an ``optax.GradientTransformationExtraArgs``.
    """
    check_key(key, "the transformation's key=...")

    def init_fn(params: PyTree) -> ProcessTransformState:
        flat, _ = ravel_pytree(params)
        if flat.size == 0:
            raise ValueError("the parameter pytree has no array leaves for the process to fit.")
        if not jnp.issubdtype(flat.dtype, jnp.floating):
            raise TypeError(f"parameters must be floating point; got dtype {flat.dtype}.")
        std = _flat_std(init_std, params, flat.shape[0], flat.dtype)
        init_key, process_key = jax.random.split(key)
        process = make_process(flat, std)
        initial = make_initial(init_key, flat, std)
        pstate = _strengthen(process.init(initial, obs, obs_noise, key=process_key))
        return ProcessTransformState(pstate, flat, std)

    def update_fn(
        updates: PyTree, state: ProcessTransformState, params: PyTree = None, **extra_args: Any
    ) -> tuple[PyTree, ProcessTransformState]:
        del updates  # the gradient slot is unused: the ensemble provides the step
        if params is None:
            raise ValueError(
                "an ensemble Kalman transformation needs the current parameters: call "
                "tx.update(grads, opt_state, params)."
            )
        flat, unravel = ravel_pytree(params)
        process = make_process(state.anchor, state.std)
        pstate = state.process_state
        particles = process.particles(pstate)

        def member(theta):
            return forward_fn(unravel(theta.astype(flat.dtype)), **extra_args)

        outputs = _mark_failures(jax.vmap(member)(particles).astype(particles.dtype))
        new_pstate = process.update(pstate, outputs)
        step = (process.mean(new_pstate) - flat).astype(flat.dtype)
        return unravel(step), ProcessTransformState(new_pstate, state.anchor, state.std)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _gaussian_ensemble(n_ensemble: int):
    def make_initial(key, flat, std):
        z = jax.random.normal(key, (n_ensemble, flat.shape[0]), dtype=flat.dtype)
        return flat[None, :] + std[None, :] * z

    return make_initial


def _check_process(process: Any, cls: type, name: str) -> None:
    if process is not None and not isinstance(process, cls):
        raise TypeError(f"{name}(process=...) must be a {cls.__name__}; got {type(process)}.")


def eki(
    forward_fn: Callable[..., Any],
    obs: Any,
    obs_noise: Any,
    *,
    n_ensemble: int,
    key: PRNGKeyArray,
    init_std: Any = 1.0,
    process: EKI | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Ensemble Kalman inversion as an optax transformation.

    The optimiser state holds an ensemble of `n_ensemble` members drawn as
    ``params + init_std * z``; each ``update`` takes one EKI step (see `EKI`)

    $$\theta_j \leftarrow \theta_j + C^{\theta g}(C^{gg} + \Gamma/\Delta t)^{-1}
      (y + \eta_j - G(\theta_j))$$

    and returns ``mean_new - params``. Same ``key`` as a standalone run gives the same
    iterates: ``init_key, process_key = jax.random.split(key)``, initial ensemble
    ``flat(params) + init_std * jax.random.normal(init_key, (n_ensemble, N_p))``, then
    ``EKI.init(ensemble, obs, obs_noise, key=process_key)``.

    **Arguments:**

    - `forward_fn`: ``params -> G(params)`` of shape ``(N_y,)`` for ONE parameter pytree
        (extra keyword arguments of ``update`` are passed on).
    - `obs`, `obs_noise`: ``y`` and ``Gamma`` (any noise form).
    - `n_ensemble`: ``N_e``.
    - `key`: PRNG key (initial ensemble and the process's perturbations).
    - `init_std`: initial spread around the parameters (scalar, flat vector or pytree).
    - `process`: a configured `EKI` (default ``EKI()``: stochastic, `DataMisfitController`,
        which stops at algorithm time 1; pass ``EKI(scheduler=FixedScheduler(dt))`` to keep
        stepping in a long training loop).

    **Returns:** an ``optax.GradientTransformationExtraArgs``.

    **Reference:** Kovachki & Stuart (2019), *Ensemble Kalman inversion: a derivative-free
    technique for machine learning tasks*, Inverse Problems 35.

    !!! Example

        ```python
        import jax, jax.numpy as jnp, optax
        from filterax.processes import optax as fxo

        A = jnp.array([[1.0, 2.0], [0.5, -1.0], [0.0, 3.0]])
        y = A @ jnp.array([1.0, -0.5])
        tx = fxo.eki(lambda p: A @ p["w"], y, 1e-2, n_ensemble=20, key=jax.random.key(0))
        params = {"w": jnp.zeros(2)}
        state = tx.init(params)
        for _ in range(5):
            updates, state = tx.update(params, state, params)  # the gradient slot is unused
            params = optax.apply_updates(params, updates)
        ```
    """
    _check_process(process, EKI, "eki")
    proc = EKI() if process is None else process
    if int(n_ensemble) < 2:
        raise ValueError(f"eki(n_ensemble=...) must be at least 2; got {n_ensemble}.")
    return process_transform(
        lambda anchor, std: proc,
        forward_fn,
        obs,
        obs_noise,
        make_initial=_gaussian_ensemble(int(n_ensemble)),
        key=key,
        init_std=init_std,
    )


def eks(
    forward_fn: Callable[..., Any],
    obs: Any,
    obs_noise: Any,
    *,
    n_ensemble: int,
    key: PRNGKeyArray,
    init_std: Any = 1.0,
    prior_mean: Any = None,
    prior_cov: Any = None,
    process: EKS | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""The ensemble Kalman sampler as an optax transformation.

    Each ``update`` is one EKS step (interacting Langevin dynamics, see `EKS`); the ensemble
    keeps its spread (it samples the posterior rather than collapsing), and the parameters
    follow the ensemble mean. The process key advances inside the state every step.

    **Arguments:**

    - `forward_fn`, `obs`, `obs_noise`, `n_ensemble`, `key`, `init_std`: as in `eki` (same
        initial ensemble and key convention).
    - `prior_mean`, `prior_cov`: the Gaussian prior (flat ``(N_p,)`` mean; covariance in any
        noise form). Default: centred on the initial parameters with variance ``init_std^2``.
    - `process`: a configured `EKS` instead (then `prior_mean`/`prior_cov` must be None).

    **Returns:** an ``optax.GradientTransformationExtraArgs``.

    **Reference:** Garbuno-Iñigo, Hoffmann, Li & Stuart (2020), *Interacting Langevin
    diffusions: gradient structure and ensemble Kalman sampler*, SIAM J. Appl. Dyn. Syst. 19.
    """
    _check_process(process, EKS, "eks")
    if process is not None and (prior_mean is not None or prior_cov is not None):
        raise ValueError("eks: pass either process=EKS(...) or prior_mean/prior_cov, not both.")
    if int(n_ensemble) < 2:
        raise ValueError(f"eks(n_ensemble=...) must be at least 2; got {n_ensemble}.")

    def make_process(anchor, std):
        if process is not None:
            return process
        mean = anchor if prior_mean is None else jnp.asarray(prior_mean, anchor.dtype)
        cov = std**2 if prior_cov is None else prior_cov
        return EKS(mean, cov)

    return process_transform(
        make_process,
        forward_fn,
        obs,
        obs_noise,
        make_initial=_gaussian_ensemble(int(n_ensemble)),
        key=key,
        init_std=init_std,
    )


def uki(
    forward_fn: Callable[..., Any],
    obs: Any,
    obs_noise: Any,
    *,
    init_std: Any = 1.0,
    prior_mean: Any = None,
    prior_cov: Any = None,
    key: PRNGKeyArray | None = None,
    process: UKI | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Unscented Kalman inversion as an optax transformation.

    The state carries UKI's Gaussian ``N(m, C)`` (started at ``m = params``,
    ``C = diag(init_std^2)``); each ``update`` evaluates the ``2 N_p + 1`` sigma points, takes
    one UKI step (mean AND covariance updated, see `UKI`) and returns ``m_new - params``.

    **Arguments:**

    - `forward_fn`, `obs`, `obs_noise`, `init_std`: as in `eki`.
    - `prior_mean`, `prior_cov`: UKI's prior (regularisation target / imposed prior); default
        the initial ``(params, diag(init_std^2))``.
    - `key`: unused by the deterministic UKI (accepted for a uniform interface).
    - `process`: a configured `UKI` instead (its prior is then used as given).

    **Returns:** an ``optax.GradientTransformationExtraArgs``.

    **Reference:** Huang, Schneider & Stuart (2022), *Iterated Kalman methodology for inverse
    problems*, J. Comput. Phys. 463.
    """
    _check_process(process, UKI, "uki")
    if process is not None and (prior_mean is not None or prior_cov is not None):
        raise ValueError("uki: pass either process=UKI(...) or prior_mean/prior_cov, not both.")

    def make_process(anchor, std):
        if process is not None:
            return process
        mean = anchor if prior_mean is None else jnp.asarray(prior_mean, anchor.dtype)
        cov = jnp.diag(std**2) if prior_cov is None else prior_cov
        return UKI(mean, cov)

    def make_initial(init_key, anchor, std):
        return (anchor, jnp.diag(std**2))

    return process_transform(
        make_process,
        forward_fn,
        obs,
        obs_noise,
        make_initial=make_initial,
        key=jax.random.key(0) if key is None else key,
        init_std=init_std,
    )
