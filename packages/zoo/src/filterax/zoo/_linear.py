"""Linear models: a discrete-time linear map and periodic linear advection."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, ScalarLike

from filterax.primitives import AbstractDynamics

from ._integrators import AbstractMapDynamics, check_dt, check_state

__all__ = ["LinearAdvection", "LinearModel", "random_process_covariance"]


def _as_square_matrix(matrix: ArrayLike) -> Array:
    a = jnp.asarray(matrix)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(
            f"LinearModel needs a square (N_x, N_x) matrix; got shape {a.shape}. The model "
            "maps a state to a state of the same length: pass A with A.shape == (N_x, N_x)."
        )
    if not jnp.issubdtype(a.dtype, jnp.inexact):
        a = a.astype(float)
    return a


class LinearModel(AbstractMapDynamics):
    r"""The discrete-time linear model ``x_{k+1} = A x_k``, one application per step ``dt``.

    ``model(x, t0, t1)`` applies ``A`` ``round((t1 - t0)/dt)`` times, so with the default
    ``dt = 1`` the model time is the step index (the linear problem of Bach et al. 2025,
    observed every step). The matrix is a dynamic field: it can be learned by ``jax.grad``.

    **Arguments:**

    - `matrix`: the square ``(N_x, N_x)`` matrix ``A``.
    - `dt`: the model time one application of ``A`` represents (static, > 0).

    **Reference:** DAPPER equivalent: ``dapper.mods.LA`` with ``model = A @ x``; the random
    stable construction is `LinearModel.random_stable`.

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        from filterax.zoo import LinearModel

        model = LinearModel.random_stable(jax.random.key(0), n=40)
        x3 = model(jnp.ones(40), 0.0, 3.0)      # A @ A @ A @ ones
        ```
    """

    matrix: Float[Array, "N_x N_x"] = eqx.field(converter=_as_square_matrix)
    dt: float = eqx.field(default=1.0, static=True, converter=float)

    @property
    def state_size(self) -> int:
        """The state length ``N_x``."""
        return self.matrix.shape[0]

    def step(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """One application ``A x`` (time-invariant: ``t`` is ignored)."""
        check_state(x, self.state_size, "LinearModel")
        # HIGHEST precision so float32 on GPU does not silently use TF32 matmuls.
        return jnp.matmul(self.matrix.astype(x.dtype), x, precision=jax.lax.Precision.HIGHEST)

    @classmethod
    def random_stable(
        cls, key: PRNGKeyArray, n: int = 40, margin: float = 0.1, dt: float = 1.0
    ) -> "LinearModel":
        r"""The random symmetric stable matrix of Bach, Baptista, Luk & Stuart (2025), §3.2.

        $$W_{ij} \sim \mathcal N(0, 1),\quad W' = \tfrac12 (W + W^\top) = V \Lambda V^\top,
          \quad A = V\,\frac{\Lambda}{\lambda_{\max} + \text{margin}}\,V^\top,$$

        with ``lambda_max = max_i |Lambda_i|``, so ``A`` is symmetric with spectral radius
        ``lambda_max / (lambda_max + margin) < 1``.

        **Arguments:**

        - `key`: PRNG key (the same key gives the same matrix).
        - `n`: state dimension (40 in the paper).
        - `margin`: the ``1/10`` added to ``lambda_max``.
        - `dt`: passed to `LinearModel`.

        **Returns:** a `LinearModel`.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"random_stable needs an int n >= 1; got n={n}.")
        if not margin > 0:
            raise ValueError(f"random_stable needs margin > 0 for stability; got {margin}.")
        w = jax.random.normal(key, (n, n))
        eigvals, eigvecs = jnp.linalg.eigh(0.5 * (w + w.T))
        scaled = eigvals / (jnp.max(jnp.abs(eigvals)) + margin)
        a = (eigvecs * scaled[None, :]) @ eigvecs.T
        return cls(0.5 * (a + a.T), dt=dt)


def random_process_covariance(
    key: PRNGKeyArray, n: int = 40, std: float = 0.5, jitter: float = 0.1
) -> Float[Array, "n n"]:
    r"""The random process-noise covariance of the linear problem of Bach et al. (2025), §3.2.

    $$\Sigma = Q Q^\top + \text{jitter}\cdot I,\qquad Q_{ij} \sim \mathcal N(0, \text{std}^2)$$

    (the paper's ``N(0, 0.25)`` entries and ``I/10``). Positive definite by construction.

    **Arguments:** `key` (PRNG key), `n` (dimension), `std`, `jitter`.

    **Returns:** the dense ``(n, n)`` covariance; wrap it with
    ``lx.MatrixLinearOperator(sigma, lx.positive_semidefinite_tag)`` for a filter, or pass it
    to `StochasticDynamics` as ``noise``.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"random_process_covariance needs an int n >= 1; got n={n}.")
    q = std * jax.random.normal(key, (n, n))
    return q @ q.T + jitter * jnp.eye(n, dtype=q.dtype)


class LinearAdvection(AbstractDynamics):
    r"""Periodic linear advection ``u_t + c u_x = 0``, solved exactly by a spectral shift.

    $$u(x, t_1) = u(x - c\,(t_1 - t_0), t_0),\qquad
      \hat u_k(t_1) = e^{-2\pi i k c (t_1 - t_0)/L}\,\hat u_k(t_0).$$

    The flow is evaluated in closed form, so any ``t0``/``t1`` (traced or not) is exact; a
    shift by a whole number of grid cells reproduces ``jnp.roll`` to FFT round-off. The
    Nyquist mode of an even grid is real, so for non-integer shifts it is damped by
    ``cos(pi s / dx)`` (the usual trigonometric-interpolation artefact).

    **Arguments:**

    - `n`: number of grid points (static).
    - `speed`: ``c`` in length units per time unit (dynamic; may be negative).
    - `dt`: the time step of `step` (static).
    - `length`: domain length ``L`` (static); ``None`` means ``n`` (unit grid spacing, so
      the default ``speed = dt = 1`` shifts by one cell per step as in DAPPER's ``LA``).

    **Reference:** G. Evensen, *Data Assimilation: the Ensemble Kalman Filter* (2009),
    linear advection example. DAPPER equivalent: ``dapper.mods.LA`` (``Fmat`` shift).

    !!! Example

        ```python
        import jax.numpy as jnp
        from filterax.zoo import LinearAdvection

        model = LinearAdvection(n=100)
        u = jnp.exp(-0.1 * (jnp.arange(100.0) - 50) ** 2)
        model(u, 0.0, 10.0)                      # == jnp.roll(u, 10)
        ```
    """

    n: int = eqx.field(default=40, static=True)
    speed: ScalarLike = 1.0
    dt: float = eqx.field(default=1.0, static=True, converter=float)
    length: float | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if not isinstance(self.n, int) or self.n < 2:
            raise ValueError(f"LinearAdvection needs n >= 2 grid points; got n={self.n}.")
        check_dt(self.dt, "LinearAdvection")
        if self.length is not None and not float(self.length) > 0:
            raise ValueError(f"LinearAdvection length must be > 0; got {self.length}.")

    @property
    def state_size(self) -> int:
        """The state length ``n``."""
        return self.n

    def _wavenumbers(self, *, nyquist: bool) -> np.ndarray:
        length = float(self.n if self.length is None else self.length)
        k = np.arange(self.n // 2 + 1, dtype=float)
        if self.n % 2 == 0 and not nyquist:
            k[-1] = 0.0  # the Nyquist mode has no well-defined first derivative
        return k * (2.0 * np.pi / length)

    def __call__(
        self, x: Float[Array, " N_x"], t0: ScalarLike, t1: ScalarLike
    ) -> Float[Array, " N_x"]:
        """Translate ``x`` by ``speed * (t1 - t0)`` (exact)."""
        check_state(x, self.n, "LinearAdvection")
        # Keep the true Nyquist wavenumber here: exp(-i k_N s) = (-1)^m for a shift of m
        # cells, which is what makes integer shifts exact rolls.
        k = jnp.asarray(self._wavenumbers(nyquist=True), x.dtype)
        elapsed = (jnp.asarray(t1) - jnp.asarray(t0)).astype(x.dtype)
        shift = jnp.asarray(self.speed).astype(x.dtype) * elapsed
        return jnp.fft.irfft(jnp.fft.rfft(x) * jnp.exp(-1j * k * shift), n=self.n)

    def step(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """The exact flow over one step ``dt`` from time ``t``."""
        return self(x, t, t + self.dt)

    def rhs(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """The vector field ``-c u_x`` (spectral derivative)."""
        check_state(x, self.n, "LinearAdvection")
        k = jnp.asarray(self._wavenumbers(nyquist=False), x.dtype)
        speed = jnp.asarray(self.speed).astype(x.dtype)
        return -speed * jnp.fft.irfft(1j * k * jnp.fft.rfft(x), n=self.n)
