"""Sessions for the filterax workspace (uv backend).

- ``tests-<package>``: a fresh virtual environment holding ONLY that package's declared runtime
  dependencies and its ``test`` dependency group (``uv sync --package``), then its test suite.
  A missing dependency declaration therefore fails here even when the workspace venv has it.
- ``lint``: ruff check, ruff format --check, and ``tools/check_repo.py`` (README/CI commands,
  package metadata, install lines).
- ``docs``: the mkdocs-material site with ``--strict``, then ``tools/check_site.py`` (no raw
  ``$$``, MathJax vendored, every formula typeset in headless Chromium).
- ``build``: ``uv build --all-packages`` (sdists and wheels of every distribution), then
  ``filterax-bench`` installed from those wheels alone.
- Each ``tests-<package>`` session runs its suite on two pytest-xdist workers
  (``FILTERAX_TEST_WORKERS`` overrides the count) with ``JAX_DISABLE_MOST_OPTIMIZATIONS=1``.
- Each ``tests-<package>`` session first runs the package README's examples with only its
  runtime dependencies (``tools/readme_examples.py``).

Run everything with ``python3 -m uv tool run --from 'nox[uv]>=2024.4.15' nox`` (the README's
test command); one package with ``... nox -s "tests(package='zoo')"``.
"""

import os
import shutil

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
ROOT = os.path.dirname(os.path.abspath(__file__))


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
    """Install one package alone and run its README examples, then its tests.

    The README examples run first, with only the package's declared runtime dependencies
    installed (an example importing an undeclared package fails here, as it would for a
    user), in a scratch directory (examples that write files leave nothing in the clone).
    Then the test group is added and the test suite runs.
    """
    env = {"JAX_PLATFORMS": "cpu", "PYTHONHASHSEED": "0"}
    _sync(session, "--package", f"filterax-{package}")
    readme = os.path.join(ROOT, PACKAGES[package], "README.md")
    session.chdir(session.create_tmp())
    session.run("python", os.path.join(ROOT, "tools", "readme_examples.py"), readme, env=env)
    session.chdir(ROOT)
    _sync(session, "--package", f"filterax-{package}", "--group", "test")
    session.chdir(PACKAGES[package])
    # Unit tests are dominated by XLA compile time, not run time: two xdist workers (CI has
    # two cores; one test module per worker at a time, so a module's programs are compiled
    # once) and XLA's optimisation passes mostly off roughly halve the wall time. Numerics
    # are unchanged up to rounding, which every tolerance already allows for.
    workers = os.environ.get("FILTERAX_TEST_WORKERS", "2")
    # Single-threaded Eigen: the two workers already fill the two cores, and XLA's CPU runtime
    # can wedge its multi-threaded Eigen pool on vmapped programs (a hang at low CPU load).
    test_env = {
        **env,
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false"),
    }
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "-n",
        workers,
        "--dist",
        "loadfile",
        *session.posargs,
        env=test_env,
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check over the whole workspace."""
    session.install("ruff==0.17.6")  # the version in uv.lock: formatting must not drift
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("python", "tools/check_repo.py")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site with --strict (warnings are errors)."""
    _sync(session, "--all-packages", "--group", "docs")
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    site = os.path.abspath(os.path.join(session.create_tmp(), "site"))
    session.run("mkdocs", "build", "--strict", "--site-dir", site)
    # no raw $$, MathJax vendored, every formula typeset in headless Chromium
    session.run("python", os.path.join(ROOT, "tools", "check_site.py"), site)


@nox.session(python=PYTHON)
def build(session: nox.Session) -> None:
    """Build sdists and wheels of every distribution, then install ``filterax-bench`` from
    those wheels alone (pip finds the workspace packages only in the built ``dist``, as the
    install page tells users to do) and run its CLI."""
    dist = os.path.join(session.create_tmp(), "dist")
    shutil.rmtree(dist, ignore_errors=True)
    session.run("uv", "build", "--all-packages", "-o", dist, external=True)
    session.install("--find-links", dist, "filterax-bench")
    session.chdir(session.create_tmp())
    session.run("filterax-bench", "list", env={"JAX_PLATFORMS": "cpu"})
