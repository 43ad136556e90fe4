"""The Kuramoto–Sivashinsky equation, pseudo-spectral ETD-RK4 (Kassam & Trefethen 2005)."""

import functools
import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, ScalarLike

from ._integrators import AbstractMapDynamics, check_state

__all__ = ["KuramotoSivashinsky"]


@functools.lru_cache(maxsize=32)
def _etdrk4_coefficients(n: int, length: float, dt: float, n_contour: int) -> dict[str, np.ndarray]:
    """ETD-RK4 coefficients for ``u_t = -u_xx - u_xxxx - u u_x`` on ``rfft`` modes.

    Computed once per configuration in float64 numpy. The phi-functions are evaluated by
    averaging over ``n_contour`` points on the upper half of a unit circle around each
    ``h L_k`` and taking the real part, which equals the full-circle mean for real ``L``
    and avoids the cancellation of the direct formulas near ``h L_k = 0``.
    """
    # rfft wavenumbers 2 pi k / length, with the Nyquist mode's set to 0 (kursiv.m, DAPPER).
    k = np.append(np.arange(n // 2), 0.0) * (2.0 * np.pi / length)
    lin = k**2 - k**4
    hl = dt * lin
    roots = np.exp(1j * np.pi * (np.arange(n_contour) + 0.5) / n_contour)
    z = hl[:, None] + roots[None, :]
    ez = np.exp(z)

    def contour_mean(values):
        return values.mean(axis=-1).real

    return {
        "k": k,
        "lin": lin,
        "e": np.exp(hl),
        "e2": np.exp(hl / 2.0),
        "q": dt * contour_mean((np.exp(z / 2.0) - 1.0) / z),
        "f1": dt * contour_mean((-4.0 - z + ez * (4.0 - 3.0 * z + z**2)) / z**3),
        "f2": dt * contour_mean((2.0 + z + ez * (-2.0 + z)) / z**3),
        "f3": dt * contour_mean((-4.0 - 3.0 * z - z**2 + ez * (4.0 - z)) / z**3),
    }


class KuramotoSivashinsky(AbstractMapDynamics):
    r"""The Kuramoto–Sivashinsky equation on a periodic domain, ETD-RK4 pseudo-spectral.

    $$u_t = -u\,u_x - u_{xx} - u_{xxxx},\qquad x \in [0, L)\ \text{periodic}.$$

    The state is ``u`` at the ``n`` grid points ``x_j = (j + 1) L / n`` (`grid`). Each
    step of size ``dt`` is one exponential-time-differencing RK4 step (Cox & Matthews 2002)
    on the ``rfft`` coefficients, with the phi-function coefficients computed by the
    contour-integral method of Kassam & Trefethen (2005) and no dealiasing — exactly
    DAPPER's ``step_ETD_RK4`` (including its zero wavenumber for the Nyquist mode). The
    spatial mean is conserved to round-off. Chaotic for ``L`` larger than about ``2 pi
    sqrt(2)``; typical amplitude ``|u| <~ 3`` for ``L = 32 pi``.

    **Arguments:**

    - `n`: number of grid points (static, even, ``>= 4``).
    - `length`: domain length ``L`` (static). ``32 pi`` as in DAPPER / Bocquet & Farchi
      (2019); Bach et al. (2025) use ``L = 22, n = 256, dt = 0.25``.
    - `dt`: the ETD-RK4 step (static); intervals must be whole multiples of it.
    - `n_contour`: contour points on the half circle (static; 16 as in kursiv.m).

    **Reference:** A.-K. Kassam & L. N. Trefethen, *Fourth-order time-stepping for stiff
    PDEs*, SIAM J. Sci. Comput. 26 (2005). DAPPER equivalent: ``dapper.mods.KS.Model(dt,
    DL=L/pi, Nx=n)``.

    !!! Example

        ```python
        from filterax.zoo import KuramotoSivashinsky

        model = KuramotoSivashinsky()            # n=128, L=32 pi, dt=0.5
        u = model.initial_condition()            # cos(x/16)(1 + sin(x/16))
        u = model(u, 0.0, 150.0)                 # spin up onto the attractor
        ```
    """

    n: int = eqx.field(default=128, static=True)
    length: float = eqx.field(default=32.0 * math.pi, static=True, converter=float)
    dt: float = eqx.field(default=0.5, static=True, converter=float)
    n_contour: int = eqx.field(default=16, static=True)

    def __check_init__(self):
        if not isinstance(self.n, int) or self.n < 4 or self.n % 2:
            raise ValueError(
                f"KuramotoSivashinsky needs an even number of grid points n >= 4; got "
                f"n={self.n}. Common choices: 128 (L=32 pi) or 256 (L=22)."
            )
        if not (math.isfinite(self.length) and self.length > 0):
            raise ValueError(f"KuramotoSivashinsky length must be > 0; got {self.length}.")
        if not isinstance(self.n_contour, int) or self.n_contour < 4:
            raise ValueError(f"n_contour must be an int >= 4; got {self.n_contour}.")
        # Build (and cache) the coefficients now so that a bad configuration fails here.
        _etdrk4_coefficients(self.n, self.length, self.dt, self.n_contour)

    @property
    def state_size(self) -> int:
        """The state length ``n``."""
        return self.n

    @property
    def grid(self) -> Float[Array, " N_x"]:
        """The grid points ``x_j = (j + 1) L / n`` (DAPPER's and kursiv.m's grid)."""
        return jnp.asarray(self.length * np.arange(1, self.n + 1) / self.n)

    def initial_condition(self) -> Float[Array, " N_x"]:
        """Kassam & Trefethen's ``u0 = cos(2 pi x / L)(1 + sin(2 pi x / L))`` on the grid."""
        theta = 2.0 * np.pi * np.arange(1, self.n + 1) / self.n
        return jnp.asarray(np.cos(theta) * (1.0 + np.sin(theta)))

    def _coefficients(self, dtype) -> dict[str, Array]:
        coef = _etdrk4_coefficients(self.n, self.length, self.dt, self.n_contour)
        return {name: jnp.asarray(value, dtype=dtype) for name, value in coef.items()}

    def _nonlinear(self, v: Array, ik: Array) -> Array:
        # -u u_x = -(u^2)_x / 2, evaluated on the grid and transformed back.
        u = jnp.fft.irfft(v, n=self.n)
        return -0.5 * ik * jnp.fft.rfft(u * u)

    def step(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """One ETD-RK4 step of size ``dt`` (autonomous: ``t`` is ignored)."""
        check_state(x, self.n, "KuramotoSivashinsky")
        c = self._coefficients(x.dtype)
        ik = 1j * c["k"]
        v = jnp.fft.rfft(x)
        n1 = self._nonlinear(v, ik)
        v1 = c["e2"] * v + c["q"] * n1
        n2a = self._nonlinear(v1, ik)
        v2a = c["e2"] * v + c["q"] * n2a
        n2b = self._nonlinear(v2a, ik)
        v2b = c["e2"] * v1 + c["q"] * (2.0 * n2b - n1)
        n3 = self._nonlinear(v2b, ik)
        v = c["e"] * v + c["f1"] * n1 + 2.0 * c["f2"] * (n2a + n2b) + c["f3"] * n3
        return jnp.fft.irfft(v, n=self.n)

    def rhs(self, x: Float[Array, " N_x"], t: ScalarLike = 0.0) -> Float[Array, " N_x"]:
        """The semi-discrete vector field ``-u u_x - u_xx - u_xxxx`` on the grid."""
        check_state(x, self.n, "KuramotoSivashinsky")
        c = self._coefficients(x.dtype)
        v = jnp.fft.rfft(x)
        return jnp.fft.irfft(c["lin"] * v + self._nonlinear(v, 1j * c["k"]), n=self.n)
