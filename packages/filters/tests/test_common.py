"""`prepare_analysis` (shared by every ensemble filter) and the gradient-safe spectral function."""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import jaxtyping
import lineax as lx
import numpy as np
import pytest

import filterax.filters as ff
import filterax.primitives as fxp
from filterax.filters import prepare_analysis, sqrt_transform
from filterax.filters._common import require_diagonal_noise, require_key
from filterax.primitives import symmetric_matrix_function


def _load_helpers():
    # --import-mode=importlib keeps tests/ off sys.path; load helpers.py under a unique name.
    name = "filterax_filters_tests_helpers"
    if name not in sys.modules:
        path = pathlib.Path(__file__).with_name("helpers.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


helpers = _load_helpers()

# float64 identities on O(1) data hold to ~1e-14; 1e-11 leaves room for the conditioning of
# the (N_y x N_y) noise matrices built by the helpers (condition number <= 5).
ATOL = 1e-11


@pytest.fixture
def no_runtime_typecheck():
    """Disable jaxtyping's runtime check so the library's own (production) errors surface."""
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


def _prepare(problem, **kwargs):
    return prepare_analysis(
        jnp.asarray(problem.forecast),
        jnp.asarray(problem.obs),
        problem.obs_op,
        problem.obs_noise(),
        **kwargs,
    )


@pytest.mark.parametrize("noise", helpers.NOISE_KINDS)
@pytest.mark.parametrize("n_obs", [3, 9])
def test_fields_match_numpy(noise, n_obs):
    problem = helpers.make_linear_problem(0, 6, 5, n_obs, noise=noise)
    inputs = _prepare(problem)
    X, H, R, y = problem.forecast, problem.H, problem.noise_cov, problem.obs
    n_e = X.shape[0]
    mean = X.mean(0)
    Y = X @ H.T
    Yp = Y - Y.mean(0)
    d = y - Y.mean(0)
    np.testing.assert_allclose(inputs.forecast_mean, mean, atol=ATOL)
    np.testing.assert_allclose(inputs.anomalies, X - mean, atol=ATOL)
    np.testing.assert_allclose(inputs.observed, Y, atol=ATOL)
    np.testing.assert_allclose(inputs.obs_anomalies, Yp, atol=ATOL)
    np.testing.assert_allclose(inputs.innovation, d, atol=ATOL)
    S, delta = np.asarray(inputs.whitened_anomalies), np.asarray(inputs.whitened_innovation)
    np.testing.assert_allclose(S @ S.T, Yp @ np.linalg.solve(R, Yp.T) / (n_e - 1), atol=ATOL)
    np.testing.assert_allclose(S @ delta, Yp @ np.linalg.solve(R, d) / np.sqrt(n_e - 1), atol=ATOL)
    np.testing.assert_allclose(delta @ delta, d @ np.linalg.solve(R, d), atol=ATOL)
    np.testing.assert_allclose(inputs.log_likelihood, problem.reference().log_likelihood, atol=ATOL)
    assert inputs.noise_structure == (
        "dense" if noise == "dense" else "low_rank" if noise == "low_rank" else "diagonal"
    )


@pytest.mark.parametrize("noise_rank", [1, 2, 4, 7])
def test_low_rank_whitener_is_inverse_square_root(noise_rank):
    # k < N_y uses the k x k push-through form; k >= N_y the N_y x N_y form.
    problem = helpers.make_linear_problem(1, 6, 5, 4, noise="low_rank", noise_rank=noise_rank)
    inputs = _prepare(problem)
    G = jax.vmap(inputs.whitener.vector, in_axes=1, out_axes=1)(jnp.eye(4))
    np.testing.assert_allclose(G.T @ G, np.linalg.inv(problem.noise_cov), atol=ATOL)
    np.testing.assert_allclose(inputs.whitener.rows(jnp.eye(4)), G.T, atol=ATOL)


@pytest.mark.parametrize("noise", helpers.NOISE_KINDS)
def test_missing_observations_equal_observed_subset(noise):
    missing = (1, 4)
    problem = helpers.make_linear_problem(2, 7, 5, 6, noise=noise, missing=missing)
    keep = ~np.isnan(problem.obs)
    inputs = _prepare(problem)
    subset = _prepare(problem.subset(keep))
    for field in ("whitened_anomalies", "obs_anomalies"):
        full = np.asarray(getattr(inputs, field))
        assert np.all(full[:, ~keep] == 0.0)
    assert np.all(np.asarray(inputs.innovation)[~keep] == 0.0)
    assert np.all(np.asarray(inputs.whitened_innovation)[~keep] == 0.0)
    S, Ss = np.asarray(inputs.whitened_anomalies), np.asarray(subset.whitened_anomalies)
    np.testing.assert_allclose(S @ S.T, Ss @ Ss.T, atol=ATOL)
    np.testing.assert_allclose(
        S @ inputs.whitened_innovation, Ss @ subset.whitened_innovation, atol=ATOL
    )
    np.testing.assert_allclose(inputs.log_likelihood, subset.log_likelihood, atol=ATOL)
    assert int(inputs.n_obs) == keep.sum()
    leaves = jax.tree_util.tree_leaves(inputs)
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in leaves if leaf.dtype != bool)


def test_precomputed_observed_ensemble_equals_obs_op():
    problem = helpers.make_linear_problem(3, 6, 5, 4)
    Y = jnp.asarray(problem.forecast @ problem.H.T)
    a = _prepare(problem)
    b = _prepare(problem, observed=Y)
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(lambda u, v: bool(jnp.allclose(u, v, atol=ATOL)), a, b)
    )


def test_jit_matches_eager_and_float32_stays_float32():
    problem = helpers.make_linear_problem(4, 6, 5, 4, noise="dense")
    eager = _prepare(problem)
    jitted = jax.jit(lambda X, y: prepare_analysis(X, y, problem.obs_op, problem.obs_noise()))(
        jnp.asarray(problem.forecast), jnp.asarray(problem.obs)
    )
    np.testing.assert_allclose(jitted.whitened_anomalies, eager.whitened_anomalies, atol=ATOL)
    np.testing.assert_allclose(jitted.log_likelihood, eager.log_likelihood, atol=ATOL)
    # Python-float noise and float64 obs must not promote a float32 forecast.
    low = prepare_analysis(
        jnp.asarray(problem.forecast, jnp.float32), jnp.asarray(problem.obs), lambda x: x[:4], 0.5
    )
    for leaf in jax.tree_util.tree_leaves(low):
        assert leaf.dtype in (jnp.float32, jnp.bool_)


@pytest.mark.usefixtures("no_runtime_typecheck")
def test_bad_inputs_raise_clear_errors():
    X = jnp.ones((5, 3)) + jnp.arange(5.0)[:, None]
    y = jnp.zeros(2)
    H = lambda x: x[:2]  # noqa: E731
    with pytest.raises(ValueError, match=r"2-D ensemble of shape \(N_e, N_x\)"):
        prepare_analysis(jnp.ones(3), y, H, 1.0, name="ETKF.analysis")
    with pytest.raises(ValueError, match="at least 2"):
        prepare_analysis(jnp.ones((1, 3)), y, H, 1.0)
    with pytest.raises(ValueError, match="1-D observation vector"):
        prepare_analysis(X, jnp.zeros((2, 1)), H, 1.0)
    with pytest.raises(ValueError, match="returns N_y=2 observations per member but `obs` has"):
        prepare_analysis(X, jnp.zeros(3), H, 1.0)
    with pytest.raises(ValueError, match="ONE state"):
        prepare_analysis(X, y, lambda x: x.sum(), 1.0)
    with pytest.raises(ValueError, match="does not match the 2 observations"):
        prepare_analysis(X, y, H, jnp.ones(3))
    with pytest.raises(ValueError, match="does not match the 2 observations"):
        prepare_analysis(X, y, H, jnp.eye(3))
    with pytest.raises(ValueError, match="positive diagonal"):
        prepare_analysis(X, y, H, fxp.low_rank_noise(jnp.ones((2, 1))))
    with pytest.raises(TypeError, match="callable"):
        prepare_analysis(X, y, "identity", 1.0)
    with pytest.raises(TypeError, match="floating-point"):
        prepare_analysis(jnp.ones((5, 3), jnp.int32), y, H, 1.0)
    # Errors are raised at trace time under jit too.
    with pytest.raises(ValueError, match="obs` has"):
        jax.jit(lambda X: prepare_analysis(X, jnp.zeros(3), H, 1.0))(X)
    inputs = prepare_analysis(X, y, H, jnp.array([[1.0, 0.2], [0.2, 1.0]]))
    with pytest.raises(ValueError, match="needs a diagonal observation-noise.*Use ETKF"):
        require_diagonal_noise(inputs, "EnSRF_Serial", "ETKF")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        require_key(None, "StochasticEnKF")


def _degenerate_gram(t):
    # t * diag(1, 1, 1, 0, 0) + (1 - t) * same: eigenvalues {t, t, t, 0, 0} (two repeated).
    basis, _ = np.linalg.qr(np.random.default_rng(5).standard_normal((5, 5)))
    basis = jnp.asarray(basis)
    lam = jnp.array([1.0, 1.0, 1.0, 0.0, 0.0])
    return (basis * (t * lam)[None, :]) @ basis.T


@pytest.mark.parametrize("kind", ["inv_sqrt_one_plus", "inv_sqrt_one_plus_push"])
def test_spectral_function_values_and_gradient_at_repeated_eigenvalues(kind):
    m = _degenerate_gram(2.0)
    lam, u = np.linalg.eigh(np.asarray(m))
    lam = np.clip(lam, 0, None)
    a = np.sqrt(1 + lam)
    f = 1 / a if kind == "inv_sqrt_one_plus" else -1 / (a * (1 + a))
    np.testing.assert_allclose(symmetric_matrix_function(m, kind), (u * f) @ u.T, atol=ATOL)

    weights = jnp.asarray(np.random.default_rng(6).standard_normal((5, 5)))

    def loss(t):
        return jnp.sum(weights * symmetric_matrix_function(_degenerate_gram(t), kind))

    grad = jax.grad(loss)(2.0)
    assert np.isfinite(grad)
    np.testing.assert_allclose(grad, helpers.central_difference(loss, 2.0), rtol=1e-7)

    # A direction that splits the repeated eigenvalues: the derivative is still exact.
    direction = jnp.asarray(np.random.default_rng(7).standard_normal((5, 5)))
    direction = direction + direction.T

    def loss2(s):
        return jnp.sum(weights * symmetric_matrix_function(m + s * direction, kind))

    np.testing.assert_allclose(
        jax.grad(loss2)(0.0), helpers.central_difference(loss2, 0.0), rtol=1e-6
    )


@pytest.mark.parametrize("shape", [(6, 2), (6, 6), (6, 9)])
def test_sqrt_transform_is_symmetric_inverse_square_root(shape):
    rng = np.random.default_rng(8)
    S = rng.standard_normal(shape)
    S -= S.mean(0)
    T = np.asarray(sqrt_transform(jnp.asarray(S)))
    np.testing.assert_allclose(T, T.T, atol=ATOL)
    np.testing.assert_allclose(T @ T @ (np.eye(shape[0]) + S @ S.T), np.eye(shape[0]), atol=ATOL)
    np.testing.assert_allclose(T @ np.ones(shape[0]), np.ones(shape[0]), atol=ATOL)
    eig = np.linalg.eigvalsh(T)
    assert np.all(eig > 0)  # the principal (positive-definite) root


# --- observation operators in every form ------------------------------------------------------


@pytest.mark.parametrize("form", ["matrix", "numpy_matrix", "lineax"])
def test_matrix_and_lineax_obs_op_equal_the_callable(form):
    problem = helpers.make_linear_problem(11, 6, 5, 4, noise="dense", missing=(1,))
    H = {
        "matrix": jnp.asarray(problem.H),
        "numpy_matrix": np.asarray(problem.H),
        "lineax": lx.MatrixLinearOperator(jnp.asarray(problem.H)),
    }[form]
    ref = _prepare(problem)
    got = prepare_analysis(
        jnp.asarray(problem.forecast), jnp.asarray(problem.obs), H, problem.obs_noise()
    )
    for field in ("observed", "whitened_anomalies", "whitened_innovation", "log_likelihood"):
        np.testing.assert_allclose(getattr(got, field), getattr(ref, field), atol=1e-12)


@pytest.mark.usefixtures("no_runtime_typecheck")
def test_obs_op_of_the_wrong_size_is_a_clear_error():
    X = jnp.ones((5, 3)) + jnp.arange(5.0)[:, None]
    with pytest.raises(ValueError, match=r"matrix must have shape \(N_y, N_x\) = \(N_y, 3\)"):
        prepare_analysis(X, jnp.zeros(2), jnp.ones((2, 4)), 1.0)
    with pytest.raises(ValueError, match="takes vectors of size 4 but the state has N_x=3"):
        prepare_analysis(X, jnp.zeros(2), lx.MatrixLinearOperator(jnp.ones((2, 4))), 1.0)


# --- a noise structure filterax does not know, added through the registry --------------------


class TaggedDenseNoise(lx.AbstractLinearOperator):
    """A user's own covariance type (here a dense matrix in disguise)."""

    matrix: jax.Array

    def mv(self, vector):
        return self.matrix @ vector

    def as_matrix(self):
        return self.matrix

    def transpose(self):
        return self

    def in_structure(self):
        return jax.ShapeDtypeStruct((self.matrix.shape[0],), self.matrix.dtype)

    def out_structure(self):
        return self.in_structure()


@lx.is_symmetric.register(TaggedDenseNoise)
def _(op):
    return True


@lx.is_diagonal.register(TaggedDenseNoise)
def _(op):
    return False


WHITENED = []


@fxp.noise_whitening.register(TaggedDenseNoise)
def _(op, dtype=None):
    WHITENED.append(op)
    return fxp.Whitening.build(fxp.CholeskyRoot(jnp.linalg.cholesky(op.matrix)))


@fxp.mask_noise.register(TaggedDenseNoise)
def _(op, mask):
    keep = mask[:, None] & mask[None, :]
    return TaggedDenseNoise(jnp.where(keep, op.matrix, jnp.eye(op.matrix.shape[0])))


def test_registered_noise_structure_is_used_by_the_filters():
    problem = helpers.make_linear_problem(12, 6, 5, 4, noise="dense", missing=(2,))
    args = (jnp.asarray(problem.forecast), jnp.asarray(problem.obs), problem.obs_op)
    WHITENED.clear()
    got = ff.ETKF().analysis(None, *args, TaggedDenseNoise(jnp.asarray(problem.noise_cov)))
    assert WHITENED and all(isinstance(op, TaggedDenseNoise) for op in WHITENED)
    ref = ff.ETKF().analysis(None, *args, jnp.asarray(problem.noise_cov))
    # Same Cholesky whitening reached through the registry: equal to round-off.
    np.testing.assert_allclose(got.particles, ref.particles, atol=1e-12)
    np.testing.assert_allclose(got.log_likelihood, ref.log_likelihood, atol=1e-12)
