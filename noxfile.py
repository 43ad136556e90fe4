"""Sessions for the filterax workspace (uv backend).

- ``tests-<package>``: a fresh virtual environment holding ONLY that package's declared runtime
  dependencies and its ``test`` dependency group (``uv sync --package``), then its test suite.
  A missing dependency declaration therefore fails here even when the workspace venv has it.
- ``lint``: ruff check and ruff format --check.
- ``docs``: the mkdocs-material site with ``--strict``.
- ``build``: ``uv build --all-packages`` (sdists and wheels of every distribution).

Run everything with ``uvx nox``; one package with ``uvx nox -s "tests(package='zoo')"``.
"""

import os

import nox

nox.needs_version = ">=2024.4.15"
nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "tests", "docs", "build"]
nox.options.error_on_missing_interpreters = True

PACKAGES = {
    "primitives": "packages/primitives",
    "zoo": "packages/zoo",
    "filters": "packages/filters",
    "smoothers": "packages/smoothers",
    "processes": "packages/processes",
    "learn": "packages/learn",
    "bench": "bench",
}
PYTHON = "3.11"


def _sync(session: nox.Session, *args: str) -> None:
    """``uv sync`` into the session's own venv (not the workspace .venv), from the lock file."""
    session.run_install(
        "uv",
        "sync",
        "--locked",
        "--no-default-groups",
        *args,
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
        external=True,
    )


@nox.session(python=PYTHON)
@nox.parametrize("package", list(PACKAGES))
def tests(session: nox.Session, package: str) -> None:
    """Install one package alone (declared deps + its test group) and run its tests."""
    _sync(session, "--package", f"filterax-{package}", "--group", "test")
    session.chdir(PACKAGES[package])
    env = {"JAX_PLATFORMS": "cpu", "PYTHONHASHSEED": "0"}
    session.run("python", "-m", "pytest", "-q", *session.posargs, env=env)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check over the whole workspace."""
    session.install("ruff==0.17.6")  # the version in uv.lock: formatting must not drift
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site with --strict (warnings are errors)."""
    _sync(session, "--all-packages", "--group", "docs")
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", os.path.join(session.create_tmp(), "site")
    )


@nox.session(python=PYTHON)
def build(session: nox.Session) -> None:
    """Build sdists and wheels of every distribution in the workspace."""
    session.run(
        "uv", "build", "--all-packages", "-o", session.create_tmp() + "/dist", external=True
    )
