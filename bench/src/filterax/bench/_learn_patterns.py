"""`run_learning_patterns`: the training patterns of differentiable DA (master list 8.5-8.7) on
Lorenz-96 sakov2008 twins, trained online on windows of 10 cycles with
`filterax.learn.fit_windows` (innovation NLL):

- A  learn the forcing F from 6 (truth 8): ETKF N=20, infl 1.1;
- A' a StencilMLP correcting a biased model (F=7, truth 8): forecast RMSE on a held-out twin;
- B  a pointwise observation operator (truth h(x) = 3 asinh(x/3)), starting from H = identity;
- C  LETKF N=10: inflation (1 + softplus), GC radius (exp) and R diagonal (exp), held-out
     rmse.a beside DAPPER's hand-tuned infl 1.04, loc_rad 6.

Learned values are averaged over the second half of the windows (Bach et al. 2025, Remark 2.4).
The command line runs them with a progress bar fed by the training loop's callback:

    filterax-bench learn [--quick] [--patterns A_forcing C_letkf] [--out bench-results]
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optax

import filterax.filters as ff
import filterax.learn as fl
import filterax.primitives as fxp
from filterax.zoo import Lorenz96, presets

__all__ = ["PATTERNS", "run_learning_patterns"]

WINDOW = 10


def nll(result, obs, params):
    return -jnp.mean(result.log_likelihood)


def etkf(infl=1.1):
    return ff.EnsembleFilter(ff.ETKF(), inflator=fxp.MultiplicativeInflator(infl))


def held_out(method, model, ssm, test, n_ens):
    out = ff.run(
        method,
        model,
        ssm.initial_ensemble(jax.random.key(11), n_ens),
        test.observations,
        test.times,
        key=jax.random.key(12),
        throw=False,
    )
    s = out.scores(test.truth, ssm.burn_in_cycles)
    return {"rmse_a": float(s["rmse_a"]), "rmse_f": float(s["rmse_f"])}


def tail_mean(tree):
    return jax.tree_util.tree_map(lambda a: jnp.mean(a[a.shape[0] // 2 :], axis=0), tree)


def pattern_a_forcing(ssm, xp, test, callback=None):
    def build(F):
        return etkf(), eqx.tree_at(lambda m: m.dynamics.forcing, ssm, F)

    X0 = ssm.initial_ensemble(jax.random.key(1), 20)
    out = fl.fit_windows(
        build,
        nll,
        jnp.asarray(6.0),
        optax.adam(0.05),
        X0,
        xp.observations,
        xp.times,
        window=WINDOW,
        key=jax.random.key(3),
        callback=callback,
    )
    tail = out.trajectory[out.trajectory.shape[0] // 2 :]
    return {
        "F_start": 6.0,
        "F_final": float(out.params),
        "F_tail_mean": float(jnp.mean(tail)),
        "F_tail_sd": float(jnp.std(tail)),
        "target": "8 +- 0.05",
    }


def pattern_a_mlp(ssm, xp, test, callback=None):
    def build(net):
        dyn = fl.ResidualDynamics(Lorenz96(forcing=7.0), net)
        return etkf(), eqx.tree_at(lambda m: m.dynamics, ssm, dyn)

    X0 = ssm.initial_ensemble(jax.random.key(1), 20)
    net0 = fl.StencilMLP(2, 16, 1, key=jax.random.key(5), input_scale=8.0, zero_output=True)
    out = fl.fit_windows(
        build,
        nll,
        net0,
        optax.adam(3e-3),
        X0,
        xp.observations,
        xp.times,
        window=WINDOW,
        key=jax.random.key(3),
        callback=callback,
        save_trajectory=False,
    )
    return {
        "biased_F7": held_out(*build(net0), ssm, test, 20),
        "learned": held_out(*build(out.params), ssm, test, 20),
        "perfect_F8": held_out(etkf(), ssm, ssm, test, 20),
    }


def pattern_b_obs_operator(ssm, xp, test_unused, callback=None):
    h = lambda x: 3.0 * jnp.arcsinh(x / 3.0)  # noqa: E731
    ssm = eqx.tree_at(lambda m: m.obs_op, ssm, h)
    xp = ssm.simulate(jax.random.key(0), xp.observations.shape[0])  # observed through h
    test = ssm.simulate(jax.random.key(10), 1400)

    def build(H):
        return etkf(), eqx.tree_at(lambda m: m.obs_op, ssm, H)

    X0 = ssm.initial_ensemble(jax.random.key(1), 20)
    H0 = fl.ResidualObsOperator(
        fl.StencilMLP(0, 16, 1, key=jax.random.key(5), input_scale=8.0, zero_output=True)
    )
    out = fl.fit_windows(
        build,
        nll,
        H0,
        optax.adam(1e-2),
        X0,
        xp.observations,
        xp.times,
        window=WINDOW,
        key=jax.random.key(3),
        callback=callback,
        save_trajectory=False,
    )

    def h_error(H):
        x = test.truth[ssm.burn_in_cycles :]
        return float(jnp.sqrt(jnp.mean((jax.vmap(H)(x) - h(x)) ** 2)))

    return {
        "h_rms_error_identity": h_error(H0),
        "h_rms_error_learned": h_error(out.params),
        "identity_H": held_out(*build(H0), ssm, test, 20),
        "learned_H": held_out(*build(out.params), ssm, test, 20),
        "true_h": held_out(etkf(), ssm, ssm, test, 20),
    }


def pattern_c_letkf(ssm, xp, test, callback=None):
    infl, pos = fl.SoftplusPositive(lower=1.0), fl.ExpPositive()

    def make(factor, radius, rdiag):
        model = eqx.tree_at(lambda m: m.obs_noise, ssm, lx.DiagonalLinearOperator(rdiag))
        method = ff.EnsembleFilter(
            ff.LETKF(radius=radius), inflator=fxp.MultiplicativeInflator(factor)
        )
        return method, model

    def build(p):
        return make(infl(p["infl"]), pos(p["loc"]), pos(p["r"]))

    X0 = ssm.initial_ensemble(jax.random.key(1), 10)
    p0 = {
        "infl": infl.inverse(jnp.asarray(1.2)),
        "loc": pos.inverse(jnp.asarray(3.0)),
        "r": pos.inverse(jnp.full(40, 2.0)),
    }
    out = fl.fit_windows(
        build,
        nll,
        p0,
        optax.adam(0.03),
        X0,
        xp.observations,
        xp.times,
        window=WINDOW,
        key=jax.random.key(3),
        callback=callback,
    )
    traj = {
        "infl": infl(out.trajectory["infl"]),
        "loc": pos(out.trajectory["loc"]),
        "r": pos(out.trajectory["r"]),
    }
    avg = tail_mean(traj)
    dapper_radius = fxp.dapper_radius_to_gc_halfwidth(6.0)
    return {
        "learned": {
            "infl": float(avg["infl"]),
            "gc_radius": float(avg["loc"]),
            "r_mean": float(jnp.mean(avg["r"])),
            "r_min": float(jnp.min(avg["r"])),
            "r_max": float(jnp.max(avg["r"])),
        },
        "start": held_out(*make(1.2, 3.0, jnp.full(40, 2.0)), ssm, test, 10),
        "learned_heldout": held_out(*make(avg["infl"], avg["loc"], avg["r"]), ssm, test, 10),
        "dapper_infl1.04_loc6": held_out(*make(1.04, dapper_radius, jnp.ones(40)), ssm, test, 10),
        "target_rmse_a": 0.20,
    }


# name -> (function, training cycles at full size)
PATTERNS: dict[str, tuple[Callable[..., dict], int]] = {
    "A_forcing": (pattern_a_forcing, 2000),
    "A_mlp_correction": (pattern_a_mlp, 2000),
    "B_obs_operator": (pattern_b_obs_operator, 2000),
    "C_letkf": (pattern_c_letkf, 4000),
}


def run_learning_patterns(
    patterns: Sequence[str] | None = None,
    *,
    quick: bool = False,
    out: str | Path | None = None,
    progress: Callable[[str], Callable[[fl.TrainingProgress], Any] | None] | None = None,
) -> dict[str, Any]:
    """Train the patterns and score them on a held-out twin (float64).

    **Arguments:**

    - `patterns`: names of `PATTERNS` (default: all four).
    - `quick`: quarter-length training runs (about a minute each on a laptop CPU).
    - `out`: a directory to write ``learn.json`` into (``None``: nothing written).
    - `progress`: ``progress(name) -> callback`` giving each pattern's training callback
      (`filterax.learn.TrainingProgress` after every window), e.g. a progress bar; ``None``
      for none.

    **Returns:** ``{pattern: results}`` (learned values, held-out rmse, training cycles and
    seconds) plus the settings.
    """
    names = list(PATTERNS) if patterns is None else list(patterns)
    unknown = [n for n in names if n not in PATTERNS]
    if unknown:
        raise KeyError(f"unknown pattern(s) {unknown}; choose from {list(PATTERNS)}")
    jax.config.update("jax_enable_x64", True)
    scale = 4 if quick else 1
    ssm = presets.lorenz96_sakov2008()
    test = ssm.simulate(jax.random.key(10), 1400)  # held-out twin: 400 burn-in + 1000 scored
    results: dict[str, Any] = {"window": WINDOW, "quick": quick}
    for name in names:
        fn, n_cycles = PATTERNS[name]
        n = n_cycles // scale
        xp = ssm.simulate(jax.random.key(0), n)
        t = time.perf_counter()
        callback = None if progress is None else progress(name)
        results[name] = fn(ssm, xp, test, callback=callback)
        results[name]["train_cycles"] = n
        results[name]["seconds"] = round(time.perf_counter() - t, 1)
    if out is not None:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        (path / "learn.json").write_text(json.dumps(results, indent=2))
    return results
