"""Cross-check against flowjax (the optional extra `filterax-learn[flowjax]`): our spline
coupling flow and flowjax's, fitted to the same samples of a non-Gaussian 2-d conditional
density, reach a similar held-out negative log-likelihood, both close to the exact one.

(A same-parameters comparison is not meaningful: flowjax maps the conditioner's outputs to
bins, derivatives and scales through its own constraints, so equal raw numbers give different
splines. Equal-quality fits of one density compare what matters: both are correct flows.)"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

from filterax.learn import conditional_flow, fit_conditional_flow, flow_nll

flowjax = pytest.importorskip("flowjax")
from flowjax.bijections import RationalQuadraticSpline  # noqa: E402
from flowjax.distributions import Normal  # noqa: E402
from flowjax.flows import coupling_flow  # noqa: E402
from flowjax.train import fit_to_data  # noqa: E402


def _banana(key, n):
    """y ~ N(0, 1); x1 | y ~ N(y, 0.5^2); x2 | x1 ~ N(x1^2/2 - 1, 0.4^2)."""
    k1, k2, k3 = jax.random.split(key, 3)
    y = jax.random.normal(k1, (n, 1))
    x1 = y + 0.5 * jax.random.normal(k2, (n, 1))
    x2 = 0.5 * x1**2 - 1.0 + 0.4 * jax.random.normal(k3, (n, 1))
    return jnp.concatenate([x1, x2], axis=1), y


def _exact_nll(x, y):
    x, y = np.asarray(x), np.asarray(y)
    lp = scipy.stats.norm.logpdf(x[:, 0], y[:, 0], 0.5)
    lp += scipy.stats.norm.logpdf(x[:, 1], 0.5 * x[:, 0] ** 2 - 1.0, 0.4)
    return -float(np.mean(lp))


def test_our_spline_flow_and_flowjax_fit_a_conditional_density_equally_well():
    x, y = _banana(jax.random.key(0), 1000)
    x_test, y_test = _banana(jax.random.key(1), 4000)
    exact = _exact_nll(x_test, y_test)

    ours = conditional_flow(jax.random.key(2), 2, 1, n_layers=2, width=32)
    # minibatches of 100 at lr 5e-3, as flowjax's loop below (which stops early, ~20 epochs)
    fit = eqx.filter_jit(
        lambda f: fit_conditional_flow(
            f, x, y, optax.adam(5e-3), 400, key=jax.random.key(5), batch_size=100
        )
    )(ours)
    ours_nll = float(eqx.filter_jit(flow_nll)(fit.flow, x_test, y_test))

    theirs = coupling_flow(
        jax.random.key(3),
        base_dist=Normal(jnp.zeros(2)),
        transformer=RationalQuadraticSpline(knots=8, interval=4),
        cond_dim=1,
        flow_layers=2,
        nn_width=32,
    )
    theirs, _ = fit_to_data(
        jax.random.key(4),
        theirs,
        (x, y),
        learning_rate=5e-3,
        max_epochs=40,
        batch_size=100,
        show_progress=False,
    )
    theirs_nll = -float(jnp.mean(eqx.filter_jit(theirs.log_prob)(x_test, y_test)))

    gaussian_nll = -float(
        np.mean(
            scipy.stats.multivariate_normal(
                np.mean(np.asarray(x), 0), np.cov(np.asarray(x).T)
            ).logpdf(np.asarray(x_test))
        )
    )
    # Observed: exact 1.20, ours 1.43, flowjax 1.37, Gaussian 2.96 (1000 training samples
    # limit both: the excess is KL to the truth from a finite fit + MC error ~0.02 at 4000
    # test points).
    # Both within 0.4 nats of the exact conditional, within 0.15 of each other, and both
    # clearly better than the best unconditional Gaussian.
    assert ours_nll - exact < 0.4, (ours_nll, exact)
    assert theirs_nll - exact < 0.4, (theirs_nll, exact)
    assert abs(ours_nll - theirs_nll) < 0.15, (ours_nll, theirs_nll)
    assert gaussian_nll > max(ours_nll, theirs_nll) + 0.3, (gaussian_nll, ours_nll)
