"""Repository consistency checks run by the nox ``lint`` session.

1. The README's test command is exactly what ``.ci/run`` runs, and ``docs/install.md`` shows
   the README's two newcomer commands verbatim (CI tests the line a newcomer copies).
2. Every published distribution has the release metadata (description, license, classifiers
   with the Python versions CI tests) and pins each workspace package it uses to that
   package's current minor series (``>=X.Y.0,<X.(Y+1)``), so packages release independently.
3. No README or docs page tells users to ``pip install filterax-...`` from PyPI as if the
   packages were released (only after "once released").

Exit status 1 with one line per problem; 0 when everything holds.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIRED_CLASSIFIERS = (
    "Programming Language :: Python :: 3.11",
    "Intended Audience :: Science/Research",
    "Development Status :: 3 - Alpha",
)


def _command_lines(text: str) -> list[str]:
    """The newcomer commands in ```bash blocks: ``python3 -m pip install uv && ...`` lines
    that run the main job (``filterax-bench run``) or the test suite (``... nox``)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        lines += [
            ln.strip()
            for ln in block.splitlines()
            if ln.startswith("python3 -m pip install uv &&")
            and ("filterax-bench run" in ln or ln.rstrip().endswith(" nox"))
        ]
    return lines


def check_commands() -> list[str]:
    problems = []
    readme = _command_lines((ROOT / "README.md").read_text(encoding="utf-8"))
    if len(readme) != 2:
        n = len(readme)
        return [f"README.md: expected the 2 newcomer commands (main job, tests); found {n}"]
    ci = [
        ln.strip()
        for ln in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.startswith(("#", "set ", "cd "))
    ]
    if ci != [readme[1]]:
        problems.append(f".ci/run runs {ci!r}, the README's test command is {readme[1]!r}")
    install = _command_lines((ROOT / "docs" / "install.md").read_text(encoding="utf-8"))
    if install != readme:
        problems.append("docs/install.md: the two newcomer commands differ from the README's")
    return problems


def _members() -> dict[str, tuple[Path, dict]]:
    out = {}
    paths = [*ROOT.glob("packages/*/pyproject.toml"), ROOT / "bench" / "pyproject.toml"]
    for path in sorted(paths):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        out[data["project"]["name"]] = (path, data)
    return out


def _version(path: Path, data: dict) -> str:
    version = data["project"].get("version")
    if version is None:  # dynamic: the package's _version.py
        for candidate in path.parent.glob("src/filterax/*/_version.py"):
            match = re.search(r'__version__\s*=\s*"([^"]+)"', candidate.read_text())
            if match:
                return match.group(1)
    return version


def check_metadata() -> list[str]:
    problems = []
    members = _members()
    versions = {name: _version(path, data) for name, (path, data) in members.items()}
    for path, data in members.values():
        project = data["project"]
        rel = path.relative_to(ROOT)
        private = "Private :: Do Not Upload" in project.get("classifiers", [])
        if not private:
            for field in ("description", "license", "readme", "requires-python"):
                if not project.get(field):
                    problems.append(f"{rel}: [project] {field} is missing")
            missing = [c for c in REQUIRED_CLASSIFIERS if c not in project.get("classifiers", [])]
            if missing:
                problems.append(f"{rel}: classifiers lack {missing}")
        for req in project.get("dependencies", []):
            match = re.match(r"(filterax-[a-z]+)\s*(.*)$", req)
            if not match or match.group(1) not in versions:
                continue
            dep, spec = match.groups()
            major, minor = (int(p) for p in versions[dep].split(".")[:2])
            want = f">={major}.{minor}.0,<{major}.{minor + 1}"
            if spec.replace(" ", "") != want:
                problems.append(
                    f"{rel}: depends on {req!r}; pin the workspace package's minor series: "
                    f"'{dep}{want}'"
                )
    return problems


def check_install_lines() -> list[str]:
    problems = []
    pages = [ROOT / "README.md", *ROOT.glob("packages/*/README.md"), ROOT / "bench" / "README.md"]
    pages += sorted((ROOT / "docs").rglob("*.md"))
    for page in pages:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            stripped = line.strip().lstrip("#").strip()
            if re.match(r"(python3 -m )?pip install filterax-", stripped):
                problems.append(
                    f"{page.relative_to(ROOT)}:{number}: 'pip install filterax-...' from PyPI "
                    "fails until the packages are released; show the --find-links dist "
                    "install (see docs/install.md) and the PyPI line only 'once released'"
                )
    return problems


def main() -> int:
    problems = check_commands() + check_metadata() + check_install_lines()
    for problem in problems:
        print(f"check_repo: {problem}", file=sys.stderr)
    if not problems:
        print("check_repo: README/.ci commands, package metadata and install lines are consistent")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
