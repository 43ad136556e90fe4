import importlib.metadata
import pathlib
import tomllib

import filterax.filters


def test_version_matches_pyproject():
    pyproject = pathlib.Path(__file__).parents[1] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["version"]
    assert (
        filterax.filters.__version__ == declared == importlib.metadata.version("filterax-filters")
    )


def test_namespace_is_pep420():
    import filterax

    # A PEP 420 namespace package has no __file__; an __init__.py in src/filterax would break
    # the other distributions that share the namespace.
    assert getattr(filterax, "__file__", None) is None


def test_modules_follow_the_abstract_final_pattern():
    # What equinox's strict=True used to enforce (abstract classes named Abstract*, concrete
    # methods and concrete classes final); equinox 0.13 ignores that keyword.
    from filterax.testing import module_structure_violations

    assert module_structure_violations("filterax.filters") == []
