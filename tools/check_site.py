"""Checks of the built documentation site, run by the nox ``docs`` session after the build.

1. No page holds a raw ``$$`` (two display formulas on adjacent lines used to merge into one
   block that showed a literal ``$$$$``) or loads MathJax from a CDN (the site must render
   its maths offline: MathJax is vendored under ``javascripts/mathjax``).
   The executed tutorials (mkdocs-jupyter pages, ``jp-Notebook``) keep the notebook's ``$``
   and ``$$`` delimiters for MathJax, so the raw ``$$`` test skips them (check 3 covers them).
2. Every tutorial page (under ``tutorials/``) shows at least one rendered figure (an inline
   PNG or SVG output) and no execution error (no ``Traceback`` in any output).
3. In headless Chromium, every page's formulas are typeset: one ``mjx-container`` per
   ``arithmatex`` element, no ``$`` left in a tutorial's text outside code once MathJax ran,
   and no ``mjx-merror`` (TeX MathJax could not parse). Skipped, with a message, when
   ``FILTERAX_SKIP_BROWSER=1`` or no Chromium is found (``FILTERAX_CHROMIUM``, else
   ``/usr/bin/chromium``, else ``chromium`` on ``PATH``).

Usage: ``python tools/check_site.py SITE_DIR``; exit status 1 with one line per problem.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

MATHJAX = Path("javascripts") / "mathjax" / "tex-chtml.js"
NOTEBOOK = 'class="jp-Notebook'
# elements whose text is not prose: scripts, styles, code, and the typeset formulas
_NOT_PROSE = re.compile(
    r"<(script|style|pre|code|mjx-container)\b.*?</\1>", flags=re.DOTALL | re.IGNORECASE
)
_FIGURE = re.compile(r'<img[^>]+src="data:image/(png|svg\+xml)|<svg\b', flags=re.IGNORECASE)


def _chromium() -> str | None:
    if os.environ.get("FILTERAX_SKIP_BROWSER") == "1":
        return None
    for candidate in (os.environ.get("FILTERAX_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


def static_problems(site: Path) -> list[str]:
    problems = []
    if not (site / MATHJAX).is_file():
        problems.append(f"{MATHJAX} is missing from the site: the maths needs it offline")
    for page in sorted(site.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        rel = page.relative_to(site)
        notebook = NOTEBOOK in text
        if rel.parts[0] == "tutorials" and rel.name == "index.html":
            problems += tutorial_problems(rel, text)
        if "$$" in text and not notebook:
            line = text.count("\n", 0, text.index("$$")) + 1
            problems.append(
                f"{rel}:{line}: raw '$$' (two display formulas on adjacent lines? put a "
                "blank line between them)"
            )
        for src in re.findall(r'<script[^>]+src="(https?://[^"]+)"', text):
            if "mathjax" in src.lower():
                problems.append(f"{rel}: MathJax loaded from {src}: use the vendored copy")
    return problems


def tutorial_problems(rel: Path, text: str) -> list[str]:
    """A tutorial page must be an executed notebook with a figure and no error output."""
    if NOTEBOOK not in text:
        return [f"{rel}: not an executed notebook page (mkdocs-jupyter did not render it)"]
    problems = []
    if not _FIGURE.search(text.split(NOTEBOOK, 1)[1]):
        problems.append(f"{rel}: no rendered figure (every tutorial shows at least one)")
    if "Traceback" in text:
        problems.append(f"{rel}: an output shows a Traceback (an execution error)")
    return problems


def browser_problems(site: Path, chromium: str) -> list[str]:
    problems = []
    for page in sorted(site.rglob("*.html")):
        source = page.read_text(encoding="utf-8")
        expected = source.count('class="arithmatex"')
        notebook = NOTEBOOK in source
        if expected == 0 and not notebook:
            continue
        proc = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--allow-file-access-from-files",
                "--virtual-time-budget=20000",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        dom = proc.stdout
        rel = page.relative_to(site)
        typeset = dom.count("<mjx-container")
        errors = dom.count("<mjx-merror")
        # TeX left as text in an arithmatex element: MathJax did not recognise the formula
        raw = len(re.findall(r'class="arithmatex">\s*\\[(\[]', dom))
        if notebook:
            # the notebook's Markdown cells ($ ... $ formulas): none left as text once typeset
            body = dom.split(NOTEBOOK, 1)[-1]
            for cell in body.split("jp-MarkdownOutput")[1:]:
                raw += _NOT_PROSE.sub("", cell.split('class="jp-Cell ', 1)[0]).count("$")
            typeset -= body.count("<mjx-container")  # not arithmatex elements
        if proc.returncode != 0 or typeset != expected or errors or raw:
            problems.append(
                f"{rel}: {typeset} of {expected} formulas typeset, {errors} MathJax errors, "
                f"{raw} left as raw TeX"
                + (f" (chromium exit {proc.returncode})" if proc.returncode else "")
            )
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python tools/check_site.py SITE_DIR", file=sys.stderr)
        return 2
    site = Path(argv[0]).resolve()  # file:// URIs need an absolute path
    problems = static_problems(site)
    chromium = _chromium()
    if chromium is None:
        print("check_site: no Chromium (or FILTERAX_SKIP_BROWSER=1): formulas not rendered")
    else:
        problems += browser_problems(site, chromium)
    for problem in problems:
        print(f"check_site: {problem}", file=sys.stderr)
    if not problems:
        pages = len(list(site.rglob("*.html")))
        print(f"check_site: {pages} pages, maths vendored and typeset without errors")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
