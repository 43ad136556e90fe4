"""Input checks shared by every public function.

Shape and dtype checks look only at static information, so they run at trace time under
`jax.jit` and raise before any computation. Value checks (`check_parameter`) raise at once for
values known at trace time and attach an `eqx.error_if` to traced ones, so a bad radius or
inflation under `vmap`/`grad` still fails loudly. Messages say what to pass instead.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

_ASSUME_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "filterax_assume_checked", default=False
)


@contextlib.contextmanager
def assume_checked() -> Iterator[None]:
    """Trace-time context in which `check_parameter` skips its checks of *traced* values.

    For library code that passes a value it has already checked to a public function that
    checks it again: a `LETKF` hands its `radius` (checked by the field's converter when the
    filter was built) to its taper on every cycle. Without this, each re-check of a traced
    value is an `eqx.error_if`, a host callback in every compiled cycle (slower, and programs
    with callbacks are never stored in JAX's persistent compilation cache). Concrete values
    are still checked. Only wrap calls whose traced inputs were checked where they were made.

    **Example:**

    ```python
    with assume_checked():
        weights = self.taper(distances, self.radius)
    ```
    """
    token = _ASSUME_CHECKED.set(True)
    try:
        yield
    finally:
        _ASSUME_CHECKED.reset(token)


def check_ensemble(x: Any, name: str = "ensemble", *, min_members: int = 2) -> None:
    """Raise unless ``x`` is a floating ``(N_e, N_x)`` array with ``N_e >= min_members``."""
    shape = jnp.shape(x)
    if len(shape) != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (N_e, N_x) with the ensemble axis first; "
            f"got shape {shape}. Stack members along axis 0 (e.g. jnp.stack(members))."
        )
    if shape[0] < min_members:
        raise ValueError(
            f"{name} has N_e={shape[0]} members; at least {min_members} are needed for "
            "ensemble statistics (the Bessel-corrected covariance divides by N_e - 1). "
            "Pass an ensemble with more members."
        )
    if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        raise TypeError(
            f"{name} must be a floating-point array; got dtype {jnp.result_type(x)}. "
            "Cast it with .astype(jnp.float32) or .astype(jnp.float64)."
        )


def check_vector(x: Any, name: str, size: int | None = None) -> None:
    """Raise unless ``x`` is a 1-D array (of length ``size`` when given)."""
    shape = jnp.shape(x)
    if len(shape) != 1:
        raise ValueError(f"{name} must be a 1-D array; got shape {shape}.")
    if size is not None and shape[0] != size:
        raise ValueError(f"{name} must have length {size}; got length {shape[0]}.")


def check_same_members(a: Any, b: Any, name_a: str, name_b: str) -> None:
    """Raise unless two ensembles have the same number of members (leading axis)."""
    na, nb = jnp.shape(a)[0], jnp.shape(b)[0]
    if na != nb:
        raise ValueError(
            f"{name_a} has {na} members but {name_b} has {nb}; both must share the leading "
            "ensemble axis (N_e). Apply the observation operator to every member with jax.vmap."
        )


def concrete_value(value: Any) -> np.ndarray | None:
    """``value`` as a numpy array when it is known at trace time, else ``None``.

    The one place that decides whether a value can be checked eagerly: Python numbers, numpy
    and concrete JAX arrays give an array; a tracer (a value under `jit`, `vmap` or `grad`)
    gives ``None``, and such values must be checked at run time (a status or `eqx.error_if`).

    **Example:**

    ```python
    concrete_value(1.5)                          # array(1.5)
    jax.jit(lambda x: concrete_value(x) is None)(1.0)  # True
    ```
    """
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value)
    except (TypeError, jax.errors.TracerArrayConversionError):
        return None


def as_float_parameter(value: Any) -> Any:
    """``value`` as a JAX array, with Python ints made floats (so `jax.grad` can reach it).

    The one converter for numeric hyper-parameter fields (radii, inflation factors, noise
    scales): a Python number stays weakly typed and follows the dtype (float32/float64) of the
    ensemble it meets.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, (float, np.ndarray, np.number)):
        # A value known now stays known inside a trace (a concrete array, not a tracer), so
        # its checks run once, here, instead of as run-time callbacks in every compiled
        # program that builds the module (which also kept those programs out of JAX's
        # persistent compilation cache).
        with jax.ensure_compile_time_eval():
            return jnp.asarray(value)
    return jnp.asarray(value)


def _describe(low: Any, high: Any, low_open: bool, high_open: bool, allow_inf: bool) -> str:
    parts = []
    if low is not None and high is not None:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        parts.append(f"in {left}{low:g}, {high:g}{right}")
        low = high = None
    elif low == 0 and high is None:
        parts.append("strictly positive" if low_open else "non-negative")
        low = None
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    if not allow_inf:
        parts.append("finite")
    text = " and ".join(parts) if parts else "a number"
    return text + (" (not NaN)" if allow_inf else " (not NaN or inf)")


def check_parameter(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = True,
    hint: str = "",
    traced: bool = True,
) -> Any:
    """Check a hyper-parameter against ``[low, high]`` (or open ends) and return it.

    NaN always fails (``x < 0`` is False for NaN, so a naive positivity check lets it through);
    ``allow_inf=False`` also refuses $\\pm\\infty$. A value known at trace time is checked
    now and a `ValueError` names the parameter, the allowed range and the value. A traced value
    (a radius, inflation or noise scale under `jax.vmap`/`jax.grad`/`jax.jit`) is returned
    wrapped in `eqx.error_if`, so the check runs when the program runs and a bad value raises
    instead of propagating as a plausible number (under `vmap`: if any batch member is bad).
    Use the returned value: the traced check is attached to it. Gradients pass through
    unchanged. ``traced=False`` checks concrete values only, for constructors that run inside
    compiled loops on values the caller checks at run time (the noise operators: the driver
    turns invalid traced noise into a status instead of an error).

    **Example:**

    ```python
    radius = check_parameter(radius, "LETKF(radius=...)", low=0.0, low_open=True)
    alpha = check_parameter(alpha, "RTPS.alpha", low=0.0, high=1.0, allow_inf=False)
    ```
    """
    arr = concrete_value(value)
    if arr is not None and not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must be a real number; got {value!r}.")
    allowed = _describe(low, high, low_open, high_open, allow_inf)
    suffix = f" {hint}" if hint else ""
    if arr is not None:
        with np.errstate(invalid="ignore"):
            ok = ~np.isnan(arr)
            if not allow_inf:
                ok &= np.isfinite(arr)
            if low is not None:
                ok &= (arr > low) if low_open else (arr >= low)
            if high is not None:
                ok &= (arr < high) if high_open else (arr <= high)
        if not np.all(ok):
            if arr.ndim == 0:
                got = f"got {arr.item()}"
            else:
                index = np.unravel_index(int(np.argmin(ok)), arr.shape)
                where = index[0] if len(index) == 1 else tuple(int(i) for i in index)
                got = f"got {arr[index].item()} at index {where}"
            raise ValueError(f"{name} must be {allowed}; {got}.{suffix}")
        return value
    if not traced or _ASSUME_CHECKED.get():
        return value
    x = jnp.asarray(value)
    ok = ~jnp.isnan(x)
    if not allow_inf:
        ok &= jnp.isfinite(x)
    if low is not None:
        ok &= (x > low) if low_open else (x >= low)
    if high is not None:
        ok &= (x < high) if high_open else (x <= high)
    return eqx.error_if(
        value,
        ~jnp.all(ok),
        f"{name} must be {allowed}; a traced value (under jit/vmap/grad) was not.{suffix}",
    )


def check_nonnegative(value: Any, name: str, *, traced: bool = True) -> Any:
    """`check_parameter` with ``value >= 0`` (NaN refused); returns the (checked) value."""
    return check_parameter(value, name, low=0.0, traced=traced)


def check_positive(value: Any, name: str, *, traced: bool = True) -> Any:
    """`check_parameter` with ``value > 0`` (NaN refused); returns the (checked) value."""
    return check_parameter(value, name, low=0.0, low_open=True, traced=traced)


def parameter_converter(name: str, **bounds: Any) -> Callable[[Any], Any]:
    """A field converter: `as_float_parameter`, then `check_parameter` with `bounds`.

    For numeric hyper-parameter fields of an `eqx.Module`, so the check runs whenever the
    module is built: at once for a concrete value, and inside the program for a traced one
    (a module built under `jax.vmap` or `jax.grad` over the parameter).

    **Example:**

    ```python
    class MyInflator(eqx.Module):
        factor: Array = eqx.field(converter=parameter_converter("MyInflator.factor", low=0.0))
    ```
    """

    def convert(value: Any) -> Any:
        return check_parameter(as_float_parameter(value), name, **bounds)

    return convert
