"""Execute the Python examples of a README, in order, in one namespace.

Run by the nox ``tests`` session of each package *before* its test dependencies are installed,
so an example that imports a package the distribution does not declare (``filterax.zoo`` in the
filters README, say) fails there with ``ModuleNotFoundError`` instead of failing for a user.

Every fenced ```` ```python ```` block is executed; a block directly preceded by the line
``<!-- readme-example: skip -->`` is not (for examples that need a cluster, a GPU, or a
user-supplied file). Usage::

    python tools/readme_examples.py packages/filters/README.md [more READMEs...]
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

SKIP_MARK = "<!-- readme-example: skip -->"
_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def examples(text: str) -> list[tuple[int, str]]:
    """The ``(first line number, source)`` of each Python block not marked to be skipped."""
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").splitlines()
        if before and before[-1].strip() == SKIP_MARK:
            continue
        line = text.count("\n", 0, match.start()) + 2  # first line of the block's body
        blocks.append((line, match.group(1)))
    return blocks


def run(path: Path) -> int:
    """Execute the examples of one README; returns how many ran."""
    blocks = examples(path.read_text(encoding="utf-8"))
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for line, source in blocks:
        # Pad so tracebacks point at the README's own line numbers.
        code = compile("\n" * (line - 1) + source, str(path), "exec")
        start = time.perf_counter()
        exec(code, namespace)
        print(f"{path}:{line}: example ran in {time.perf_counter() - start:.1f} s", flush=True)
    return len(blocks)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python tools/readme_examples.py README.md [...]", file=sys.stderr)
        return 2
    for name in argv:
        path = Path(name)
        if not path.is_file():
            print(f"readme_examples: {path} is not a file", file=sys.stderr)
            return 2
        run(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
