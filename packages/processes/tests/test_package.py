import importlib.metadata
import pathlib
import tomllib

import filterax.processes


def test_version_matches_pyproject():
    pyproject = pathlib.Path(__file__).parents[1] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["version"]
    assert (
        filterax.processes.__version__
        == declared
        == importlib.metadata.version("filterax-processes")
    )


def test_namespace_is_pep420():
    import filterax

    # A PEP 420 namespace package has no __file__; an __init__.py in src/filterax would break
    # the other distributions that share the namespace.
    assert getattr(filterax, "__file__", None) is None
