r"""One-dimensional diffusion problems: the heat equation and the Darcy flow forward model.

- `HeatEquation1D`: ``u_t = kappa u_xx`` on ``[0, L]`` with ``u = 0`` at both ends, second-order
  finite differences on the interior grid, advanced by the *exact* flow of the semi-discrete
  system (a discrete sine transform), so any interval is exact and unconditionally stable;
- `HeatInverse1D`: the initial condition of the continuous heat equation from point sensors at
  a few times (a linear inverse problem with a closed-form forward map);
- `Darcy1D`: ``-(kappa u')' = 1`` on ``[0, 1]``, ``u(0) = u(1) = 0``, with ``log kappa`` a sum
  of Karhunen–Loève modes; the forward map of the calibration benchmark ``darcy1d``.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, ScalarLike

from filterax.primitives import AbstractDynamics

from ._integrators import check_dt, check_state

__all__ = ["Darcy1D", "HeatEquation1D", "HeatInverse1D"]

_HIGHEST = jax.lax.Precision.HIGHEST


class HeatEquation1D(AbstractDynamics):
    r"""The 1-D heat equation with zero (Dirichlet) ends, solved exactly in space-discrete form.

    $$u_t = \kappa\,u_{xx},\quad x\in(0, L),\quad u(0, t) = u(L, t) = 0,$$

    on the ``n`` interior points ``x_j = j h``, ``h = L/(n+1)``, with the second-order
    Laplacian ``(u_{j-1} - 2u_j + u_{j+1})/h^2``. Its eigenvectors are the sine modes
    ``sin(k pi x_j / L)`` with eigenvalues ``-lambda_k``,

    $$\lambda_k = \frac{4}{h^2}\sin^2\!\Big(\frac{k\pi h}{2L}\Big)
    = \Big(\frac{k\pi}{L}\Big)^2 + O(h^2),$$

    so the flow over any interval is exact: ``u(t_1) = S\,e^{-\kappa\Lambda(t_1 - t_0)} S^T
    u(t_0)`` (``S`` the orthonormal discrete sine transform). Each mode of the continuous
    equation decays like ``e^{-\kappa (k\pi/L)^2 t}``; the grid reproduces it to ``O(h^2)``.

    **Arguments:**

    - `n`: interior grid points (static, ``>= 2``).
    - `diffusivity`: ``kappa > 0`` (dynamic: it can be differentiated or estimated).
    - `length`: ``L`` (static).
    - `dt`: the step of `step` (static).

    **Reference:** case study "1-D heat equation" of the filterax tutorials; K. Law, A. Stuart &
    K. Zygalakis (2015), *Data Assimilation: A Mathematical Introduction*, §2 (the heat
    equation as a linear dynamical system). DAPPER has no heat-equation model.

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.zoo import HeatEquation1D

    model = HeatEquation1D(n=63)
    u0 = jnp.sin(jnp.pi * model.grid)        # the first mode
    model(u0, 0.0, 1.0)                      # ~ exp(-0.1 pi^2) u0
    ```
    """

    n: int = eqx.field(default=63, static=True)
    diffusivity: ScalarLike = 0.1
    length: float = eqx.field(default=1.0, static=True, converter=float)
    dt: float = eqx.field(default=0.01, static=True, converter=float)

    def __check_init__(self):
        if not isinstance(self.n, int) or self.n < 2:
            raise ValueError(f"HeatEquation1D needs n >= 2 interior points; got n={self.n}.")
        if not (math.isfinite(self.length) and self.length > 0):
            raise ValueError(f"HeatEquation1D length must be > 0; got {self.length}.")
        check_dt(self.dt, "HeatEquation1D")
        value = (
            np.asarray(self.diffusivity)
            if not isinstance(self.diffusivity, jax.core.Tracer)
            else None
        )
        if value is not None and not (np.all(np.isfinite(value)) and np.all(value > 0)):
            raise ValueError(
                f"HeatEquation1D diffusivity must be a finite number > 0; got {self.diffusivity}."
            )

    @property
    def state_size(self) -> int:
        """The state length ``n``."""
        return self.n

    @property
    def grid(self) -> Float[Array, " N_x"]:
        """The interior points ``x_j = j L / (n + 1)``, ``j = 1..n``."""
        return jnp.asarray(self.length * np.arange(1, self.n + 1) / (self.n + 1))

    def eigenvalues(self) -> Float[Array, " N_x"]:
        """``lambda_k``, ``k = 1..n``, of ``-Laplacian`` (see the class docstring)."""
        h = self.length / (self.n + 1)
        k = np.arange(1, self.n + 1)
        return jnp.asarray(4.0 / h**2 * np.sin(k * np.pi * h / (2.0 * self.length)) ** 2)

    def _sine_basis(self, dtype) -> Array:
        j = np.arange(1, self.n + 1)
        basis = np.sqrt(2.0 / (self.n + 1)) * np.sin(np.pi * np.outer(j, j) / (self.n + 1))
        return jnp.asarray(basis, dtype)

    def __call__(
        self, x: Float[Array, " N_x"], t0: ScalarLike, t1: ScalarLike
    ) -> Float[Array, " N_x"]:
        """The exact semi-discrete flow from ``t0`` to ``t1``."""
        check_state(x, self.n, "HeatEquation1D")
        s = self._sine_basis(x.dtype)
        elapsed = (jnp.asarray(t1) - jnp.asarray(t0)).astype(x.dtype)
        kappa = jnp.asarray(self.diffusivity).astype(x.dtype)
        decay = jnp.exp(-kappa * self.eigenvalues().astype(x.dtype) * elapsed)
        coefficients = jnp.matmul(s, x, precision=_HIGHEST)  # S is symmetric and orthogonal
        return jnp.matmul(s, decay * coefficients, precision=_HIGHEST)

    def step(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """The exact flow over one step ``dt``."""
        return self(x, t, t + self.dt)

    def rhs(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """``kappa (u_{j-1} - 2 u_j + u_{j+1}) / h^2`` with zero ends."""
        check_state(x, self.n, "HeatEquation1D")
        h = self.length / (self.n + 1)
        padded = jnp.pad(x, 1)
        lap = (padded[:-2] - 2.0 * x + padded[2:]) / h**2
        return jnp.asarray(self.diffusivity).astype(x.dtype) * lap


class HeatInverse1D(eqx.Module):
    r"""Recover the initial condition of the heat equation from point sensors (a forward model).

    The initial condition on ``[0, L]`` (zero ends) is ``K`` sine modes,
    ``u_0(x) = \sum_k \theta_k \sigma_k \sin(k\pi x/L)`` with prior scales ``sigma_k``; the
    exact solution of ``u_t = kappa u_xx`` is observed at the sensors ``x_s`` and times
    ``t_m``:

    $$G(\theta)_{(m, s)} = \sum_{k=1}^K \theta_k\,\sigma_k\,e^{-\kappa (k\pi/L)^2 t_m}
    \sin(k\pi x_s / L),$$

    (row-major in ``(m, s)``): linear in ``theta``, so with a Gaussian prior the posterior is
    Gaussian and known in closed form (`matrix`). High modes decay fast: the classic
    severely ill-posed backward heat problem.

    **Arguments:**

    - `sensors`: ``(S,)`` sensor positions in ``(0, L)``.
    - `times`: ``(M,)`` observation times ``> 0``.
    - `n_modes`: ``K`` (static).
    - `diffusivity`, `length`: ``kappa``, ``L``.
    - `decay`: the prior scales are ``sigma_k = k^{-decay}`` (static).

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.zoo import HeatInverse1D

    g = HeatInverse1D(jnp.array([0.2, 0.5, 0.7]), jnp.array([0.01, 0.05]), n_modes=6)
    g(jnp.ones(6))                           # (6,) = 2 times x 3 sensors
    ```
    """

    sensors: Float[Array, " S"]
    times: Float[Array, " M"]
    n_modes: int = eqx.field(static=True)
    diffusivity: ScalarLike = 0.1
    length: float = eqx.field(default=1.0, static=True, converter=float)
    decay: float = eqx.field(default=1.0, static=True, converter=float)

    def __check_init__(self):
        if not isinstance(self.n_modes, int) or self.n_modes < 1:
            raise ValueError(f"HeatInverse1D needs n_modes >= 1; got {self.n_modes}.")
        sensors, times = np.asarray(self.sensors), np.asarray(self.times)
        if sensors.ndim != 1 or np.any(sensors <= 0) or np.any(sensors >= self.length):
            raise ValueError(
                f"sensors must be a 1-D array of positions strictly inside (0, {self.length}); "
                f"got {sensors}."
            )
        if times.ndim != 1 or not np.all(np.isfinite(times)) or np.any(times <= 0):
            raise ValueError(f"times must be a 1-D array of finite times > 0; got {times}.")

    def matrix(self) -> Float[Array, "N_y K"]:
        """The ``(M S, K)`` matrix of the linear map ``G``."""
        k = jnp.arange(1, self.n_modes + 1, dtype=self.sensors.dtype)
        wave = k * jnp.pi / self.length
        decay = jnp.exp(-jnp.asarray(self.diffusivity) * wave[None, :] ** 2 * self.times[:, None])
        shape = jnp.sin(wave[None, :] * self.sensors[:, None])  # (S, K)
        scales = k ** (-self.decay)
        return (decay[:, None, :] * shape[None, :, :] * scales[None, None, :]).reshape(
            -1, self.n_modes
        )

    def initial_condition(
        self, theta: Float[ArrayLike, " K"], x: Float[ArrayLike, " P"]
    ) -> Float[Array, " P"]:
        """``u_0(x)`` for the parameters ``theta``."""
        k = jnp.arange(1, self.n_modes + 1, dtype=self.sensors.dtype)
        wave = k * jnp.pi / self.length
        return jnp.sin(jnp.asarray(x)[:, None] * wave[None, :]) @ (
            jnp.asarray(theta) * k ** (-self.decay)
        )

    def __call__(self, theta: Float[Array, " K"]) -> Float[Array, " N_y"]:
        """``G(theta)`` (see the class docstring)."""
        theta = jnp.asarray(theta)
        if theta.shape != (self.n_modes,):
            raise ValueError(
                f"HeatInverse1D takes {self.n_modes} mode coefficients; got shape {theta.shape}."
            )
        return jnp.matmul(self.matrix().astype(theta.dtype), theta, precision=_HIGHEST)


class Darcy1D(eqx.Module):
    r"""The 1-D Darcy (steady diffusion) forward model: permeability modes to pressure at points.

    $$-\big(\kappa(x)\,u'(x)\big)' = 1\ \text{on}\ (0, 1),\quad u(0) = u(1) = 0,\qquad
    \log\kappa(x) = \sum_{k=1}^{K}\theta_k\,\phi_k(x),$$

    discretised on ``M`` cells of width ``h = 1/M``: ``kappa`` at the cell midpoints (the
    rows of `modes` are ``phi_k`` there), ``u`` at the ``M - 1`` interior nodes ``x_i = i h``,

    $$\frac{-\kappa_{i-1/2}u_{i-1} + (\kappa_{i-1/2} + \kappa_{i+1/2})u_i
    - \kappa_{i+1/2}u_{i+1}}{h^2} = 1,$$

    solved by a tridiagonal solve; the output is ``u`` at the nodes `obs_index` (0-based
    interior-node indices, node ``i`` at ``x = (i + 1) h``). For a constant ``kappa`` the
    scheme is exact: ``u = x(1 - x)/(2 kappa)`` at the nodes.

    `Darcy1D.kl` builds the modes of EnsembleKalmanProcesses.jl's Darcy example in 1-D
    (Karhunen–Loève modes ``sqrt(2 lambda_k) sin(k pi x)`` with ``lambda_k \propto (pi^2 k^2
    + tau^2)^{-alpha}``); `filterax.zoo.presets.darcy1d_kl` is the calibration benchmark's
    problem.

    **Arguments:**

    - `modes`: ``(K, M)`` the mode values at the ``M`` cell midpoints.
    - `obs_index`: the observed interior nodes (static tuple of ints in ``[0, M - 2]``).

    **Reference:** EnsembleKalmanProcesses.jl, ``examples/Darcy`` (2-D); O. R. A. Dunbar et
    al. (2022), *EnsembleKalmanProcesses.jl*, JOSS 7(80).

    **Example:**

    ```python
    import jax.numpy as jnp
    from filterax.zoo import Darcy1D

    g = Darcy1D.kl(n_modes=8, n_cells=128, n_obs=25)
    g(jnp.zeros(8))                          # kappa = 1: x (1 - x) / 2 at 25 points
    ```
    """

    modes: Float[Array, "K M"]
    obs_index: tuple[int, ...] = eqx.field(static=True)

    def __check_init__(self):
        shape = np.shape(self.modes)
        if len(shape) != 2 or shape[1] < 2:
            raise ValueError(f"modes must be (K, M) with M >= 2 cells; got shape {shape}.")
        idx = np.asarray(self.obs_index)
        if idx.ndim != 1 or idx.size == 0 or np.any(idx < 0) or np.any(idx > shape[1] - 2):
            raise ValueError(
                f"obs_index must be interior-node indices in [0, {shape[1] - 2}]; got "
                f"{self.obs_index}."
            )

    @classmethod
    def kl(
        cls,
        n_modes: int = 8,
        n_cells: int = 128,
        n_obs: int = 25,
        tau: float = 3.0,
        alpha: float = 2.0,
    ) -> "Darcy1D":
        """Karhunen–Loève modes of a Matérn-like field (EKP's Darcy example), the leading
        mode of unit standard deviation, and `n_obs` nodes spread over the interior."""
        x = (np.arange(n_cells) + 0.5) / n_cells
        k = np.arange(1, n_modes + 1)
        lam = (math.pi**2 * k**2 + tau**2) ** (-alpha)
        lam /= lam[0]
        modes = np.sqrt(2.0 * lam)[:, None] * np.sin(math.pi * k[:, None] * x[None, :])
        obs_index = np.linspace(4, n_cells - 6, n_obs).round().astype(int)
        return cls(jnp.asarray(modes), tuple(int(i) for i in obs_index))

    @property
    def nodes(self) -> Float[Array, " N_y"]:
        """The positions ``x = (i + 1) / M`` of the observed nodes."""
        return jnp.asarray((np.asarray(self.obs_index) + 1.0) / self.modes.shape[1])

    def solve(self, theta: Float[Array, " K"]) -> Float[Array, " M1"]:
        """``u`` at all ``M - 1`` interior nodes."""
        n_cells = self.modes.shape[1]
        h = 1.0 / n_cells
        kappa = jnp.exp(theta @ self.modes)
        diag = (kappa[:-1] + kappa[1:]) / h**2
        off = -kappa[1:-1] / h**2
        lower = jnp.concatenate([jnp.zeros(1, off.dtype), off])
        upper = jnp.concatenate([off, jnp.zeros(1, off.dtype)])
        rhs = jnp.ones((n_cells - 1, 1), kappa.dtype)
        return jax.lax.linalg.tridiagonal_solve(lower, diag, upper, rhs)[:, 0]

    def __call__(self, theta: Float[Array, " K"]) -> Float[Array, " N_y"]:
        """``u`` at the observed nodes."""
        return self.solve(theta)[np.asarray(self.obs_index)]
