import importlib.metadata
import pathlib
import tomllib

import jax.numpy as jnp
import jaxtyping
import pytest

import filterax.zoo


def test_version_matches_pyproject():
    pyproject = pathlib.Path(__file__).parents[1] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["version"]
    assert filterax.zoo.__version__ == declared == importlib.metadata.version("filterax-zoo")


def test_jaxtyping_runtime_checks_are_active_in_tests():
    # The --jaxtyping-packages hook checks the one-state annotation of dynamics.__call__: a
    # (N_e, N_x) ensemble passed without vmap is caught before the body runs.
    with pytest.raises(jaxtyping.TypeCheckError):
        filterax.zoo.Lorenz96(n=8)(jnp.zeros((2, 8)), 0.0, 0.05)


def test_modules_follow_the_abstract_final_pattern():
    # What equinox's strict=True used to enforce (abstract classes named Abstract*, concrete
    # methods and concrete classes final); equinox 0.13 ignores that keyword.
    from filterax.testing import module_structure_violations

    assert module_structure_violations("filterax.zoo") == []
