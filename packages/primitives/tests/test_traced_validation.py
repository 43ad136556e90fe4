"""Value checks that NaN cannot slip through and that survive `jit`, `vmap` and `grad`."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import filterax.primitives as fxp

NAN = float("nan")


@pytest.mark.parametrize(
    ("bounds", "good", "bad"),
    [
        ({"low": 0.0, "low_open": True}, [1e-300, 1.0, np.inf], [0.0, -1.0, NAN]),
        ({"low": 0.0}, [0.0, 2.0], [-1e-300, NAN]),
        ({"low": 0.0, "high": 1.0}, [0.0, 0.5, 1.0], [-0.1, 1.1, NAN]),
        ({"allow_inf": False}, [-3.0, 0.0], [np.inf, -np.inf, NAN]),
    ],
)
def test_check_parameter_refuses_nan_and_out_of_range_values(bounds, good, bad):
    for value in good:
        assert fxp.check_parameter(value, "p", **bounds) == value
        assert float(jax.jit(lambda v: fxp.check_parameter(v, "p", **bounds))(value)) == value
    for value in bad:
        with pytest.raises(ValueError, match="p must be"):
            fxp.check_parameter(value, "p", **bounds)
        with pytest.raises(Exception, match="traced value"):
            jax.block_until_ready(jax.jit(lambda v: fxp.check_parameter(v, "p", **bounds))(value))


def test_check_parameter_names_the_first_bad_index():
    with pytest.raises(ValueError, match=r"got nan at index 2"):
        fxp.check_parameter(jnp.array([1.0, 2.0, NAN, -1.0]), "v", low=0.0)
    with pytest.raises(ValueError, match=r"got -1.0 at index \(1, 0\)"):
        fxp.check_parameter(jnp.array([[1.0], [-1.0]]), "m", low=0.0)


def test_check_parameter_under_vmap_raises_if_any_member_is_bad_and_keeps_gradients():
    check = jax.vmap(lambda v: fxp.check_parameter(v, "p", low=0.0, low_open=True))
    np.testing.assert_array_equal(check(jnp.array([1.0, 2.0])), [1.0, 2.0])
    with pytest.raises(Exception, match="p must be strictly positive"):
        jax.block_until_ready(check(jnp.array([1.0, -2.0])))
    grad = jax.grad(lambda v: fxp.check_parameter(v, "p", low=0.0) ** 2)(3.0)
    assert float(grad) == 6.0


def test_traced_false_checks_only_concrete_values():
    with pytest.raises(ValueError):
        fxp.check_parameter(-1.0, "p", low=0.0, traced=False)
    out = jax.jit(lambda v: fxp.check_parameter(v, "p", low=0.0, traced=False))(-1.0)
    assert float(out) == -1.0


@pytest.mark.parametrize(
    "taper", [fxp.gaspari_cohn, fxp.gaussian_taper, fxp.soar_taper, fxp.hard_cutoff]
)
def test_taper_radius_is_checked_concrete_and_traced(taper):
    # Regression: gaspari_cohn(d, radius < 0) under vmap gave weight 1 at distance 5, and
    # radius = NaN passed the positivity check.
    for bad in (-1.0, NAN, 0.0):
        with pytest.raises(ValueError, match="radius must be strictly positive"):
            taper(5.0, bad)
        with pytest.raises(Exception, match="radius must be strictly positive"):
            jax.block_until_ready(jax.vmap(lambda r: taper(5.0, r))(jnp.array([2.0, bad])))
    np.testing.assert_allclose(jax.vmap(lambda r: taper(1.0, r))(jnp.array([2.0])), taper(1.0, 2.0))


@pytest.mark.parametrize(
    "cls",
    [
        fxp.GaspariCohnLocalizer,
        fxp.GaussianLocalizer,
        fxp.SOARLocalizer,
        fxp.HardCutoffLocalizer,
    ],
)
def test_localizer_radius_is_checked_when_built_under_vmap(cls):
    with pytest.raises(ValueError, match=f"{cls.__name__}.radius"):
        cls(NAN)
    with pytest.raises(Exception, match=f"{cls.__name__}.radius"):
        jax.block_until_ready(jax.vmap(lambda r: cls(r).radius)(jnp.array([1.0, -1.0])))


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda v: fxp.MultiplicativeInflator(v), "MultiplicativeInflator.factor"),
        (lambda v: fxp.RTPS(v), "RTPS.alpha"),
        (lambda v: fxp.RTPP(v), "RTPP.alpha"),
        (lambda v: fxp.AdditiveInflator(v), "AdditiveInflator.noise"),
    ],
)
def test_inflator_parameters_refuse_nan(build, name):
    # Regression: MultiplicativeInflator(nan) passed every positivity check.
    with pytest.raises(ValueError, match=name):
        build(NAN)


def test_inflation_functions_check_traced_parameters():
    X = jax.random.normal(jax.random.key(0), (6, 4))
    F = jax.random.normal(jax.random.key(1), (6, 4))
    with pytest.raises(Exception, match="factor"):
        jax.block_until_ready(jax.jit(fxp.inflate_multiplicative)(X, -1.02))
    with pytest.raises(Exception, match="alpha must be in"):
        jax.block_until_ready(jax.jit(fxp.inflate_rtps)(X, F, 1.5))
    with pytest.raises(Exception, match="alpha must be in"):
        jax.block_until_ready(jax.jit(fxp.inflate_rtpp)(X, F, NAN))


def test_nan_variances_are_refused_by_the_noise_constructors():
    # Regression: diagonal_noise([1, nan]) passed its non-negativity check.
    with pytest.raises(ValueError, match="index 1"):
        fxp.diagonal_noise(jnp.array([1.0, NAN]))
    with pytest.raises(ValueError, match="not NaN"):
        fxp.isotropic_noise(NAN, 3)
    with pytest.raises(ValueError, match="not NaN"):
        fxp.LowRankUpdate(jnp.ones((3, 1)), jnp.array([1.0, NAN, 1.0]))


@pytest.mark.parametrize(
    ("noise", "valid", "valid_semidefinite"),
    [
        (1.0, True, True),
        (0.0, False, True),
        (-1.0, False, False),
        (NAN, False, False),
        (jnp.array([1.0, 2.0, 3.0]), True, True),
        (jnp.array([1.0, 0.0, 3.0]), False, True),
        (jnp.array([1.0, np.inf, 3.0]), False, False),
        (jnp.eye(3), True, True),
        (jnp.eye(3).at[0, 1].set(5.0).at[1, 0].set(5.0), False, False),
        (jnp.diag(jnp.array([1.0, 0.0, 1.0])), False, True),
        (jnp.eye(3).at[2, 2].set(NAN), False, False),
    ],
)
def test_valid_noise_agrees_with_the_eager_check(noise, valid, valid_semidefinite):
    for semidefinite, expected in ((False, valid), (True, valid_semidefinite)):
        traced = jax.jit(lambda n, s=semidefinite: fxp.valid_noise(n, 3, semidefinite=s))(noise)
        assert bool(traced) == expected, (noise, semidefinite)
        try:
            fxp.positive_definite_noise(noise, 3, semidefinite=semidefinite)
            eager = True
        except ValueError:
            eager = False
        assert eager == expected, (noise, semidefinite)


def test_valid_noise_low_rank_and_matrix_free_operators():
    factor = jnp.ones((3, 1))
    assert bool(fxp.valid_noise(fxp.LowRankUpdate(factor, jnp.ones(3)), 3))
    assert not bool(fxp.valid_noise(fxp.LowRankUpdate(factor, None), 3))
    assert bool(fxp.valid_noise(fxp.LowRankUpdate(factor, None), 3, semidefinite=True))
    bad = fxp.LowRankUpdate(factor.at[0, 0].set(jnp.nan), jnp.ones(3))
    assert not bool(jax.jit(lambda op: fxp.valid_noise(op, 3))(bad))
    # A matrix-free operator is not materialised: reported valid.
    op = lx.FunctionLinearOperator(lambda v: 2.0 * v, jax.ShapeDtypeStruct((3,), jnp.float64))
    assert bool(fxp.valid_noise(op, 3))


def test_perturbed_observations_without_a_key_names_the_fix():
    # Regression: perturbed_observations(key=None) failed deep inside JAX.
    import inspect

    fn = inspect.unwrap(fxp.perturbed_observations)  # past the test-only type checker
    with pytest.raises(TypeError, match=r"perturbed_observations\(key=...\).*jax.random.key"):
        fn(None, jnp.zeros(3), 1.0, 4)


def _has_callback(fn, *args):
    # a fresh function each time: JAX caches traces by function, not by the context
    return "callback" in str(jax.make_jaxpr(lambda *a: fn(*a))(*args))


def test_assume_checked_skips_only_the_traced_checks():
    def f(r):
        return fxp.check_parameter(r, "r", low=0.0)

    assert _has_callback(f, 1.0)
    with fxp.assume_checked():
        assert not _has_callback(f, 1.0)
        with pytest.raises(ValueError, match="r must be non-negative"):
            fxp.check_parameter(-1.0, "r", low=0.0)  # concrete values are still checked
    assert _has_callback(f, 1.0)  # the context ends with the block


def test_modules_built_from_known_values_check_them_once_not_in_every_program():
    # A concrete hyper-parameter stays concrete inside a trace: checked when the module is
    # built (also under jit), so programs that build or apply the module carry no run-time
    # check (a host callback per cycle, and no persistent compilation cache).
    X = jax.random.normal(jax.random.key(0), (5, 3))
    with pytest.raises(ValueError, match="MultiplicativeInflator.factor"):
        jax.jit(lambda x: fxp.MultiplicativeInflator(-1.0)(x))(X)
    for build in (
        lambda: fxp.MultiplicativeInflator(1.1),
        lambda: fxp.RTPS(0.5),
        lambda: fxp.RTPP(0.5),
    ):
        assert not _has_callback(lambda x, b=build: b()(x, x), X)
        inflator = build()  # applied with its fields as traced arguments
        assert not _has_callback(lambda infl, x: infl(x, x), inflator, X)
    assert not _has_callback(lambda: fxp.dapper_radius_to_gc_halfwidth(4.0) + 0.0)
    # a traced value is still checked where the module is built
    assert _has_callback(lambda f, x: fxp.MultiplicativeInflator(f)(x), 1.1, X)
