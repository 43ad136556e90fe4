"""Inflation sweep of the 4D-EnKF rows on the lorenz96_async_k4 protocol (one vmapped run per
mode): rmse.a over every observation time after the burn-in, and over the analysis times only.

    uv run python bench/scripts/enkf4d_inflation_sweep.py

Seed 0, 1500 cycles (shortened from the benchmark's 5000 to keep it to a minute or two).
"""

import jax, jax.numpy as jnp, equinox as eqx

jax.config.update("jax_enable_x64", True)
import filterax.filters as ff, filterax.primitives as fxp
from filterax.zoo import EnKF4D, presets

ssm = presets.lorenz96_sakov2008()
xp = ssm.simulate(jax.random.key(0), 1500)
E0 = ssm.initial_ensemble(jax.random.key(1), 20)
for mode in ("4d", "3d"):

    def f(factor):
        m = EnKF4D(lag=4, inflator=fxp.MultiplicativeInflator(factor), rotate=True, mode=mode)
        out = ff.run(m, ssm, E0, xp.observations, xp.times, key=jax.random.key(2), throw=False)
        an = out.diagnostics.analysed
        err = jnp.sqrt(jnp.mean((out.analysis_mean - xp.truth) ** 2, axis=1))[400:]
        return jnp.mean(err), jnp.sum(jnp.where(an[400:], err, 0)) / jnp.sum(an[400:])

    fs = jnp.array([1.1, 1.15, 1.2, 1.25, 1.3, 1.4])
    r = jax.vmap(f)(fs)
    print(mode, [(float(a), round(float(b), 3), round(float(c), 3)) for a, b, c in zip(fs, *r)])
