"""mkdocs hook: each API reference entry links to the tutorials that use that name.

The tutorials (``docs/tutorials/*.py``) are parsed with :mod:`ast`: every ``import filterax.X
as alias`` / ``from filterax.X import name`` is resolved, and each ``alias.name`` or imported
``name`` records that the tutorial uses ``filterax.X.name``. On the API pages, after each
``::: filterax.X.name`` block (the directive and its indented options), the hook inserts a line
"Used in the tutorials: ..." linking to every tutorial that uses the name, by its title (the
page's first ``# `` heading). Names no tutorial uses get no line. The index is rebuilt on every
build, so a renamed or removed use cannot leave a stale link.
"""

from __future__ import annotations

import ast
import pathlib
import re

_DIRECTIVE = re.compile(r"^::: (filterax(?:\.\w+)+)\.(\w+)\s*$")
_TITLE = re.compile(r"^# # (.+)$", re.MULTILINE)

_index: dict[str, list[tuple[str, str]]] = {}


def _uses(source: str) -> set[str]:
    """Fully qualified ``filterax.<package>.<name>`` names a tutorial script uses."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for name in node.names:
                if name.name.startswith("filterax.") and name.asname:
                    aliases[name.asname] = name.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("filterax."):
            for name in node.names:
                used.add(f"{node.module}.{name.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            used.add(f"{aliases[node.value.id]}.{node.attr}")
    return used


def on_files(files, config):
    """Index which tutorial uses which public name (runs before the pages are rendered)."""
    _index.clear()
    docs = pathlib.Path(config["docs_dir"])
    for path in sorted((docs / "tutorials").glob("*.py")):
        source = path.read_text(encoding="utf-8")
        match = _TITLE.search(source)
        title = match.group(1).strip() if match else path.stem
        for name in _uses(source):
            _index.setdefault(name, []).append((title, path.stem))
    return files


def on_page_markdown(markdown, page, config, files):
    """After each ``::: filterax.X.name`` block of an API page, list the tutorials using it."""
    if not page.file.src_uri.startswith("api/"):
        return markdown
    lines = markdown.split("\n")
    out: list[str] = []
    pending: str | None = None
    for line in lines:
        if pending is not None and not line.startswith((" ", "\t")):
            out.extend(["", pending])
            pending = None
        out.append(line)
        match = _DIRECTIVE.match(line)
        if match:
            users = _index.get(f"{match.group(1)}.{match.group(2)}", [])
            if users:
                links = ", ".join(
                    f"[{title}](../tutorials/{stem}.py)" for title, stem in sorted(users)
                )
                pending = f"*Used in the tutorials:* {links}"
    if pending is not None:
        out.extend(["", pending])
    return "\n".join(out)
