import types

import jax
import jax.numpy as jnp
import numpy as np


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8) -> bool:
    """True when two pytrees have the same structure and all leaves are close."""
    xl, xs = jax.tree_util.tree_flatten(x)
    yl, ys = jax.tree_util.tree_flatten(y)
    if xs != ys:
        return False
    return all(
        np.shape(a) == np.shape(b) and np.allclose(a, b, rtol=rtol, atol=atol)
        for a, b in zip(xl, yl, strict=True)
    )


def tol(dtype) -> float:
    """Comparison tolerance for algebraic identities at a given precision.

    float64 identities hold to ~1e-13 relative; 1e-9 leaves room for the condition number
    of the small (N_e x N_e) systems the tests build. float32 gets 1e-4 for the same reason.
    """
    return 1e-9 if jnp.dtype(dtype) == jnp.float64 else 1e-4


def random_spd(rng: np.random.Generator, n: int, cond: float = 10.0) -> np.ndarray:
    """A random symmetric positive-definite matrix with eigenvalues in [1, cond]."""
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eig = np.linspace(1.0, cond, n)
    return (q * eig) @ q.T


def random_ensemble(rng: np.random.Generator, n_ensemble: int, n_state: int) -> np.ndarray:
    """A random (N_e, N_x) ensemble with a non-zero mean."""
    return rng.standard_normal((n_ensemble, n_state)) + rng.standard_normal(n_state)


def load_sibling(test_file: str, filename: str, package: str) -> types.ModuleType:
    """Import ``filename`` (a reference module next to ``test_file``) once per session.

    Tests run with ``--import-mode=importlib``, which keeps ``tests/`` off ``sys.path``; the
    module is registered as ``filterax_<package>_tests_<stem>`` so every test file that loads
    it shares one copy.
    """
    import importlib.util
    import pathlib
    import sys

    name = f"filterax_{package}_tests_{pathlib.Path(filename).stem}"
    if name not in sys.modules:
        path = pathlib.Path(test_file).with_name(filename)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
