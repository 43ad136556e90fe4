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


def test_modules_follow_the_abstract_final_pattern():
    # What equinox's strict=True used to enforce (abstract classes named Abstract*, concrete
    # methods and concrete classes final); equinox 0.13 ignores that keyword.
    from filterax.testing import module_structure_violations

    assert module_structure_violations("filterax.primitives") == []


def test_the_structure_check_catches_each_rule():
    import abc

    import equinox as eqx

    from filterax.testing import class_structure_violations

    class Base(eqx.Module):  # abstract but not named Abstract*
        @abc.abstractmethod
        def f(self): ...

        def g(self):
            return 1

    class Impl(Base):
        def f(self):  # implementing an abstract method: allowed
            return 2

        def g(self):  # overriding a concrete method: refused
            return 3

    class Sub(Impl):  # subclassing a concrete class: refused
        pass

    found = class_structure_violations([Base, Impl, Sub])
    assert any("Base has abstract members" in v for v in found)
    assert any("Impl.g overrides the concrete" in v for v in found)
    assert any("Sub subclasses the concrete class" in v and "Impl" in v for v in found)
    assert not any("Impl.f" in v for v in found)
