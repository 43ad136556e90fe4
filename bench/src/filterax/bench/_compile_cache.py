"""JAX's persistent compilation cache for the harness.

Each leaderboard cell is one compiled program; on a 2-core CPU compiling the quick suite takes
about half of its first run. With the cache on, a second run (or a resumed one, or ``tune``
after ``run``) loads the compiled programs from disk instead. The cache lives in a user cache
directory (``$FILTERAX_BENCH_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/filterax-bench/jax``, else
``~/.cache/filterax-bench/jax``); ``--no-compile-cache`` or ``FILTERAX_BENCH_COMPILE_CACHE=off``
turns it off. JAX keys each entry by the program, the jax/jaxlib versions, the backend and the
compile options, so a changed method or library version compiles afresh.

The results record whether a cell's program came from the cache (``compile_cache_hit``): its
``compile_seconds`` is then load time, not compile time.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["CacheHits", "default_cache_dir", "enable_compile_cache"]

ENV = "FILTERAX_BENCH_COMPILE_CACHE"
_OFF = {"off", "0", "false", "no", "none", ""}
# Programs that compile faster than this are not worth a disk entry.
_MIN_COMPILE_SECONDS = 0.2


def default_cache_dir() -> Path | None:
    """The cache directory the CLI uses by default, or ``None`` when the environment
    switches the cache off (``FILTERAX_BENCH_COMPILE_CACHE=off``)."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "filterax-bench" / "jax"


def enable_compile_cache(path: str | os.PathLike[str] | None) -> Path | None:
    """Point JAX's persistent compilation cache at `path` (created if missing).

    Returns the directory in use, or ``None`` when `path` is ``None`` or cannot be created or
    written (the cache is an optimisation: then every run compiles, as without it, and a
    warning says why).
    """
    if path is None:
        return None
    import warnings

    import jax

    directory = Path(path).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK):
            raise PermissionError(f"{directory} is not writable")
    except OSError as err:
        warnings.warn(
            f"compilation cache disabled: cannot use {directory} ({err}); pass "
            f"--compile-cache DIR or set {ENV}=off",
            stacklevel=2,
        )
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", _MIN_COMPILE_SECONDS)
    return directory


class CacheHits:
    """Counts JAX's persistent-cache hits (``with CacheHits() as hits: ...; hits.count``)."""

    _lock = threading.Lock()
    _count = 0
    _registered = False

    @classmethod
    def _listen(cls, event: str, **kwargs: object) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            with cls._lock:
                cls._count += 1

    def __enter__(self) -> CacheHits:
        import jax

        cls = type(self)
        with cls._lock:
            if not cls._registered:
                jax.monitoring.register_event_listener(cls._listen)
                cls._registered = True
            self._start = cls._count
        self.count = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.count = type(self)._count - self._start
