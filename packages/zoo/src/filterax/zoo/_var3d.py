r"""3D-Var with a static background covariance, cycled as DAPPER's ``Var3D``."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import lineax as lx
from jaxtyping import Array, Float, PRNGKeyArray, Real

import filterax.primitives as fxp

from ._var4d import VarState, _check_common, _init, _step
from ._variational import background_sqrt

__all__ = ["Var3D"]


class Var3D(fxp.AbstractCycledMethod):
    r"""3D-Var: the model forecasts the mean, a static ``x_B B`` weighs it against the data.

    Cycle ``k``: the forecast ``x^f = \mathcal M(x^a_{k-1})``, then the minimiser of

    $$J(x) = \tfrac12\lVert x - x^f\rVert^2_{(x_B B)^{-1}} + \tfrac12\lVert y_k - H(x)
    \rVert^2_{R^{-1}},$$

    in control-variable form ``x = x^f + \sqrt{x_B}\,U v`` (``B = U U^\top``), so ``B^{-1}``
    is never formed:

    $$\big(I + \tilde U^\top H'^\top R^{-1} H' \tilde U\big)\,\delta v = \tilde U^\top H'^\top
    R^{-1}\big(y_k - H(x^f + \tilde U v)\big) - v,\qquad \tilde U = \sqrt{x_B}\,U,$$

    solved by lineax CG (`variational_analysis`; `n_iter` Gauss–Newton iterations for a
    nonlinear ``H``). For a linear ``H`` one iteration is the Kalman analysis with gain
    ``x_B B H^\top (x_B H B H^\top + R)^{-1}`` (DAPPER's Var3D computes exactly that gain).
    NaN entries of ``y_k`` have zero weight.

    Reported (`filterax.primitives.CycleInfo`): the forecast and analysis means, the
    innovation ``y_k - H(x^f)``, and with ``spread=True`` (default) the honest Gaussian
    spreads ``\sqrt{\mathrm{mean}_i\,(x_B B)_{ii}}`` (forecast) and
    ``\sqrt{\mathrm{mean}_i\,(P^a)_{ii}}`` with ``P^a = \tilde U (I + \tilde U^\top H'^\top R^{-1}
    H'\tilde U)^{-1}\tilde U^\top = (B^{-1}/x_B + H'^\top R^{-1} H')^{-1}`` (at the analysis),
    and the log-likelihood ``\log\mathcal N(y_k; H(x^f), x_B H' B H'^\top + R)``. These need
    dense control-space algebra (``O(N_x^3)`` per cycle): for a large ``N_x`` use
    ``spread=False``, which forms nothing of size ``N_x \times N_x`` (spreads NaN, the
    log-likelihood without its log-determinant term, an upper bound). `VarDiagnostics` has the
    Gauss–Newton and CG counts.

    **Arguments:**

    - `B`: the background covariance (DAPPER: the climatology): an ``(N_x, N_x)`` matrix,
      ``(N_x,)`` variances or a lineax operator (`StateSpaceModel.climatology` gives one); or
    - `B_sqrt`: its square root ``U``, an ``(N_x, N_v)`` matrix or any lineax operator (e.g. a
      matrix-free circulant square root for a large grid) — one of the two.
    - `xB`: the scaling of ``B``, ``> 0`` (DAPPER's ``xB``; dynamic: vmap/grad-able).
    - `n_iter`: Gauss–Newton iterations (static; 1 is DAPPER's one linearised update).
    - `wtol`: stop once ``\lVert\delta v\rVert^2 < wtol\,N_v`` (static).
    - `spread`: compute the Gaussian spreads and log-likelihood densely (static).
    - `jacobian`, `rtol`, `max_steps`: as in `variational_analysis`.

    **Initial condition** (the ``initial`` of `filterax.filters.run`): the mean at ``t0``,
    ``(N_x,)`` (DAPPER starts from ``X0.mu``).

    **Reference:** A. C. Lorenc (1986), "Analysis methods for numerical weather prediction",
    QJRMS 112, 1177–1194; D. F. Parrish & J. C. Derber (1992), "The National Meteorological
    Center's spectral statistical-interpolation analysis system", MWR 120, 1747–1763.
    DAPPER equivalent: ``dapper.da_methods.baseline.Var3D(B, xB)``.

    **Example:**

    ```python
    import jax
    import filterax.filters as ff
    from filterax.zoo import Var3D, presets

    ssm = presets.lorenz96_sakov2008()
    xp = ssm.simulate(jax.random.key(0), 1000)
    _, B = ssm.climatology(jax.random.key(1))
    out = ff.run(Var3D(B, xB=0.02), ssm, ssm.x0_mean, xp.observations, xp.times,
                 key=jax.random.key(2))
    out.scores(xp.truth, ssm.burn_in_cycles)["rmse_a"]  # ~0.4
    ```
    """

    B_sqrt: lx.AbstractLinearOperator
    xB: Any
    n_iter: int = eqx.field(static=True)
    wtol: float = eqx.field(static=True)
    spread: bool = eqx.field(static=True)
    jacobian: str = eqx.field(static=True)
    rtol: float | None = eqx.field(static=True)
    max_steps: int | None = eqx.field(static=True)

    def __init__(
        self,
        B: Any = None,
        xB: Any = 1.0,
        *,
        B_sqrt: Any = None,
        n_iter: int = 1,
        wtol: float = 0.0,
        spread: bool = True,
        jacobian: str = "fwd",
        rtol: float | None = None,
        max_steps: int | None = None,
    ):
        self.B_sqrt = background_sqrt(B, B_sqrt=B_sqrt, where="Var3D")
        self.xB = xB
        self.n_iter = n_iter
        self.wtol = wtol
        self.spread = spread
        self.jacobian = jacobian
        self.rtol = rtol
        self.max_steps = max_steps

    def __check_init__(self) -> None:
        _check_common(self, "Var3D")

    def init(self, key: PRNGKeyArray, initial: Any, model: fxp.AbstractModel) -> VarState:
        """The mean at ``t0``."""
        del key
        return _init(self, initial, model, 0, "Var3D")

    def step(
        self,
        key: PRNGKeyArray,
        state: VarState,
        model: fxp.AbstractModel,
        t_prev: Real[Array, ""],
        t: Real[Array, ""],
        obs: Float[Array, " N_y"],
    ) -> tuple[VarState, fxp.CycleInfo]:
        """Forecast the mean from ``t_prev`` to ``t``, then the 3D-Var analysis of `obs`."""
        del key
        return _step(self, 0, state, model, t_prev, t, obs, "Var3D")
