"""`geometry_context`: the model's geometry for a localising kernel, overridden by context."""

import jax.numpy as jnp
import numpy as np
import pytest

import filterax.primitives as fxp


def _model(**geometry):
    return fxp.Model(lambda x, t0, t1: x, fxp.IdentityObs(), 1.0, **geometry)


def test_the_model_geometry_is_the_context():
    grid = jnp.arange(5.0)[:, None]
    dist = fxp.PeriodicDistance(5.0)
    got = fxp.geometry_context(_model(state_coords=grid, obs_coords=grid[::2], distance=dist))
    assert set(got) == set(fxp.GEOMETRY_KEYS)
    assert got["state_coords"] is grid and got["distance"] is dist
    np.testing.assert_array_equal(got["obs_coords"], grid[::2])
    # No distance on the model: None, the kernel's default.
    assert fxp.geometry_context(_model(state_coords=grid, obs_coords=grid))["distance"] is None


def test_context_entries_override_and_extras_pass_through():
    grid = jnp.arange(5.0)[:, None]
    model = _model(state_coords=grid, obs_coords=grid, distance=fxp.PeriodicDistance(5.0))
    other = grid + 0.5
    table = jnp.zeros((5, 2), jnp.int32)
    context = {"obs_coords": other, "distance": fxp.euclidean, "local_obs_indices": table}
    got = fxp.geometry_context(model, context)
    assert got["state_coords"] is grid and got["obs_coords"] is other
    assert got["distance"] is fxp.euclidean and got["local_obs_indices"] is table
    assert context == {"obs_coords": other, "distance": fxp.euclidean, "local_obs_indices": table}
    # A model without geometry with all of it in context (what `assimilate` builds).
    got = fxp.geometry_context(_model(), {"state_coords": grid, "obs_coords": other})
    assert got["state_coords"] is grid and got["obs_coords"] is other and got["distance"] is None


def test_missing_coordinates_are_a_clear_error():
    with pytest.raises(ValueError, match="state_coords and obs_coords are missing") as err:
        fxp.geometry_context(_model(), owner="EnsembleFilter(LETKF(...))")
    assert str(err.value).startswith("EnsembleFilter(LETKF(...)) localises")
    assert "context={'state_coords'" in str(err.value)
    with pytest.raises(ValueError, match="obs_coords is missing"):
        fxp.geometry_context(_model(state_coords=jnp.arange(5.0)))
    with pytest.raises(ValueError, match="state_coords is missing"):
        fxp.geometry_context(_model(), {"obs_coords": jnp.arange(5.0)})
    with pytest.raises(TypeError, match="AbstractModel"):
        fxp.geometry_context(object())


def test_local_filter_is_a_sequential_filter():
    assert issubclass(fxp.AbstractLocalFilter, fxp.AbstractSequentialFilter)
    with pytest.raises(TypeError):
        fxp.AbstractLocalFilter()  # abstract: `analysis` is not implemented
