"""Fuzz: public primitives fed a table of bad scalars (NaN, +-inf, negative, zero), concrete
and traced, give a clear error naming the parameter, never a silent NaN or a plausible number
(`filterax.testing.assert_loud`).

Noise constructors check concrete values only (they run inside compiled loops); traced noise
is checked by `valid_noise` and the driver's status `INVALID_NOISE` (see the filters tests).
"""

import functools

import jax
import jax.numpy as jnp
import pytest

import filterax.primitives as fxp
from filterax.testing import BAD_SCALARS, assert_loud

X = jax.random.normal(jax.random.key(0), (6, 4))
F = jax.random.normal(jax.random.key(1), (6, 4))

# name -> (call(value), regex naming the parameter, bad values that must be refused, traced?)
CASES = {
    "gaspari_cohn radius": (
        lambda v: fxp.gaspari_cohn(1.0, v),
        "radius",
        "nan -inf negative zero",
        True,
    ),
    "gaussian_taper radius": (
        lambda v: fxp.gaussian_taper(1.0, v),
        "radius",
        "nan -inf negative zero",
        True,
    ),
    "soar_taper radius": (
        lambda v: fxp.soar_taper(1.0, v),
        "radius",
        "nan -inf negative zero",
        True,
    ),
    "hard_cutoff radius": (
        lambda v: fxp.hard_cutoff(1.0, v),
        "radius",
        "nan -inf negative zero",
        True,
    ),
    "GaspariCohnLocalizer": (
        lambda v: fxp.GaspariCohnLocalizer(v).radius,
        "radius",
        "nan -inf negative zero",
        True,
    ),
    "inflate_multiplicative": (
        lambda v: fxp.inflate_multiplicative(X, v),
        "factor",
        "nan +inf -inf negative zero",
        True,
    ),
    "MultiplicativeInflator": (
        lambda v: fxp.MultiplicativeInflator(v)(X),
        "factor",
        "nan +inf -inf negative zero",
        True,
    ),
    "inflate_rtps": (lambda v: fxp.inflate_rtps(X, F, v), "alpha", "nan +inf -inf negative", True),
    "inflate_rtpp": (lambda v: fxp.inflate_rtpp(X, F, v), "alpha", "nan +inf -inf negative", True),
    "RTPS": (lambda v: fxp.RTPS(v)(X, F), "alpha", "nan +inf -inf negative", True),
    "inflate_additive": (
        lambda v: fxp.inflate_additive(jax.random.key(2), X, v),
        "noise variance",
        "nan +inf -inf negative",
        True,
    ),
    "AdditiveInflator": (
        lambda v: fxp.AdditiveInflator(v)(X, key=jax.random.key(2)),
        "noise",
        "nan +inf -inf negative",
        True,
    ),
    "AdaptiveInflator variance": (
        lambda v: fxp.AdaptiveInflator(1.0, v),
        "inflation_variance",
        "nan +inf -inf negative zero",
        False,
    ),
    "diagonal_noise": (
        lambda v: fxp.diagonal_noise(jnp.ones(3).at[1].set(v)),
        "variances",
        "nan +inf -inf negative",
        False,
    ),
    "isotropic_noise": (
        lambda v: fxp.isotropic_noise(v, 3),
        "variance",
        "nan +inf -inf negative",
        False,
    ),
    "positive_definite_noise": (
        lambda v: fxp.positive_definite_noise(v, 3, name="R"),
        "R",
        "nan +inf -inf negative zero",
        False,
    ),
    "periodic period": (
        lambda v: fxp.periodic(jnp.array(1.0), jnp.array(3.0), period=v),
        "period",
        "nan -inf negative zero",
        False,
    ),
}


@pytest.mark.parametrize(
    ("case", "bad"),
    [(case, bad) for case, spec in CASES.items() for bad in spec[2].split()],
)
def test_primitive_refuses_bad_scalar(case, bad):
    call, match, _, traced = CASES[case]
    value = BAD_SCALARS[bad]
    assert assert_loud(functools.partial(call, value), match=match) == "error"
    if traced:
        assert_loud(functools.partial(jax.jit(call), value), match=match)
        batch = jnp.array([1.0 if case != "inflate_rtps" else 0.5, value])
        assert_loud(functools.partial(jax.vmap(call), batch), match=match)


def test_assert_loud_skips_prng_keys_in_results():
    # A result holding a PRNG key (every process state does) is judged by its other leaves.
    import equinox as eqx

    class State(eqx.Module):
        key: jax.Array
        x: jax.Array
        status: jax.Array

    ok = State(jax.random.key(0), jnp.ones(2), jnp.array(0))
    assert assert_loud(lambda: ok, match="x", allow_finite=True) == "value"
    bad = State(jax.random.key(0), jnp.array([jnp.nan]), jnp.array(0))
    with pytest.raises(AssertionError, match=r"silent NaN/inf with status OK in \.x"):
        assert_loud(lambda: bad, match="x")
