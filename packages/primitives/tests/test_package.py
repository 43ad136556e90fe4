import importlib.metadata
import pathlib
import tomllib

import jax.numpy as jnp
import jaxtyping
import pytest

import filterax.primitives as fxp


def test_version_matches_pyproject():
    pyproject = pathlib.Path(__file__).parents[1] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["version"]
    assert fxp.__version__ == declared == importlib.metadata.version("filterax-primitives")


def test_namespace_is_pep420():
    import filterax

    # A PEP 420 namespace package has no __file__; an __init__.py in src/filterax would break
    # the other distributions that share the namespace.
    assert getattr(filterax, "__file__", None) is None


def test_jaxtyping_runtime_checks_are_active_in_tests():
    # pyproject's --jaxtyping-packages installs the import hook: a rank-3 "ensemble" violates
    # the Float[Array, "N_e N_x"] annotation of ensemble_mean before the function body runs.
    with pytest.raises(jaxtyping.TypeCheckError):
        fxp.ensemble_mean(jnp.zeros((2, 3, 4)))
