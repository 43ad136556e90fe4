"""The harness's files: reads that fail with one line naming the file and the fix, output
locations checked before any work, and atomic writes that leave no temporary file behind.

A write goes to a uniquely named hidden file beside its target and is moved over it with
`os.replace`, so a reader (or an interrupted run) sees the old file or the new one, never half
of one; whatever goes wrong on the way, the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

__all__ = [
    "check_output_dir",
    "check_output_file",
    "read_json",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def read_json(path: str | os.PathLike[str], *, what: str, fix: str) -> Any:
    """The JSON value in `path`.

    A file that cannot be read (a directory, no permission, not UTF-8 text) or does not parse
    raises a one-line `ValueError` naming the file, what it should be (`what`, e.g.
    ``"results"``) and `fix` (e.g. ``"delete it and rerun `filterax-bench run`"``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a {what} file (not UTF-8 text); {fix}.") from err
    except OSError as err:
        raise ValueError(f"cannot read the {what} file {path} ({_reason(err)}); {fix}.") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); {fix}."
        ) from err


def read_schema_json(
    path: Path, *, what: str, schema: int, body: str, body_shape: str, fix: str
) -> dict[str, Any]:
    """Read a JSON object ``{"schema": schema, body: {...}}`` and return its ``body`` object.

    A file that cannot be read, is not JSON, is not an object, has another schema or whose
    ``body`` is not an object raises a one-line `ValueError` naming the file and `fix`.
    """
    data = read_json(path, what=what, fix=fix)
    if not isinstance(data, dict):
        raise ValueError(
            f'{path} is not a {what} file (a JSON object with "schema" and "{body}"; found '
            f"a JSON {type(data).__name__}); {fix}."
        )
    found = data.get("schema")
    if found != schema:
        raise ValueError(
            f"{path}: unknown {what} schema {found!r} (this version reads {schema}); {fix}."
        )
    content = data.get(body)
    if not isinstance(content, dict):
        raise ValueError(f'{path}: "{body}" must be an object {body_shape}; {fix}.')
    return content


def _unwritable(directory: Path) -> str | None:
    """Why no file can be created in the existing `directory`, or ``None`` if one can.

    A real probe rather than `os.access`: it also sees read-only file systems, and agrees with
    what the write will meet when running as root.
    """
    probe = directory / f".filterax-bench-probe.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        with open(probe, "xb"):
            pass
    except OSError as err:
        return _reason(err)
    with contextlib.suppress(OSError):
        probe.unlink()
    return None


def _directory_problem(path: Path, *, create_parents: bool) -> str | None:
    """Why `path` cannot be (made into) a writable directory, or ``None``. Creates nothing."""
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a directory"
    if path.is_dir():
        reason = _unwritable(path)
        return None if reason is None else f"{path} is not writable ({reason})"
    ancestor = path.parent
    if create_parents:
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
    if not ancestor.exists():
        return f"the directory {ancestor} does not exist"
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a directory"
    reason = _unwritable(ancestor)
    return (
        None if reason is None else f"cannot create {path}: {ancestor} is not writable ({reason})"
    )


def check_output_dir(
    path: str | os.PathLike[str], *, flag: str = "--out", create_parents: bool = False
) -> Path:
    """Raise a one-line `ValueError` unless `path` is a writable directory or can be created.

    Called before any work, so that a bad output location costs nothing. `path` itself may be
    missing (it is created when the first file is written); its parent must exist unless
    ``create_parents=True`` (a mistyped parent is more often a mistake than a wish).
    """
    path = Path(path)
    problem = _directory_problem(path, create_parents=create_parents)
    if problem is not None:
        raise ValueError(f"{flag} {path}: {problem}; pass a writable directory.")
    return path


def check_output_file(
    path: str | os.PathLike[str], *, flag: str, create_parents: bool = False
) -> Path:
    """Raise a one-line `ValueError` unless the file `path` can be written: not a directory,
    in a writable directory that exists (or, with ``create_parents=True``, can be created)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{flag} {path} is a directory, not a file; pass a file path such as "
            f"{path / 'tuned.json'}."
        )
    directory = path.parent
    if create_parents or directory.is_dir():
        problem = _directory_problem(directory, create_parents=create_parents)
    elif directory.exists():
        problem = f"{directory} is a file, not a directory"
    else:
        problem = f"the directory {directory} does not exist"
    if problem is not None:
        raise ValueError(f"{flag} {path}: {problem}; pass a file in a writable directory.")
    return path


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` through a temporary file and `os.replace` (never half-written;
    no temporary file is left behind, whatever fails). Creates missing parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Opened with "x" (not tempfile.mkstemp, whose 0600 mode would survive the rename) so the
    # file gets the permissions the umask gives any new file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """`write_bytes_atomic` of UTF-8 `text`."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    """Write `payload` as JSON (no NaN/inf) atomically; a payload that does not serialise
    raises before any file is created."""
    write_text_atomic(path, json.dumps(payload, indent=1, allow_nan=False) + "\n")
