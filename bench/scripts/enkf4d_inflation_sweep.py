"""Inflation sweep of the 4D-EnKF rows on the lorenz96_async_k4 protocol (one vmapped run per
mode): rmse.a over every observation time after the burn-in, and over the analysis times only.

    uv run python bench/scripts/enkf4d_inflation_sweep.py

Seed 0, 1500 cycles (shortened from the benchmark's 5000 to keep it to a minute or two).
"""

import functools

import jax
import jax.numpy as jnp

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.zoo import EnKF4D, presets

FACTORS = (1.1, 1.15, 1.2, 1.25, 1.3, 1.4)


def scores(factor, mode, ssm, xp, ensemble0):
    method = EnKF4D(lag=4, inflator=fxp.MultiplicativeInflator(factor), rotate=True, mode=mode)
    out = ff.run(
        method, ssm, ensemble0, xp.observations, xp.times, key=jax.random.key(2), throw=False
    )
    burn = ssm.burn_in_cycles
    analysed = out.diagnostics.analysed[burn:]
    err = jnp.sqrt(jnp.mean((out.analysis_mean - xp.truth) ** 2, axis=1))[burn:]
    return jnp.mean(err), jnp.sum(jnp.where(analysed, err, 0.0)) / jnp.sum(analysed)


def main():
    jax.config.update("jax_enable_x64", True)
    ssm = presets.lorenz96_sakov2008()
    xp = ssm.simulate(jax.random.key(0), 1500)
    ensemble0 = ssm.initial_ensemble(jax.random.key(1), 20)
    for mode in ("4d", "3d"):
        run = functools.partial(scores, mode=mode, ssm=ssm, xp=xp, ensemble0=ensemble0)
        all_times, at_analyses = jax.vmap(run)(jnp.asarray(FACTORS))
        for f, a, b in zip(FACTORS, all_times, at_analyses, strict=True):
            print(f"{mode} inflation {f}: rmse.a all times {float(a):.3f}, analyses {float(b):.3f}")


if __name__ == "__main__":
    main()
