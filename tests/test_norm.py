"""The U-Net's GroupNorm (ddpm_jax/models/norm.py) against Flax's
two-pass nn.GroupNorm: output and gradient (its backward pass is written
by hand), with the same parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.models.norm import GroupNorm


@pytest.mark.parametrize("shape,groups,offset", [((2, 4, 4, 32), 32, 0.0),
                                                 ((3, 5, 3, 64), 32, 0.0),
                                                 ((2, 6, 6, 12), 4, 30.0),
                                                 ((1, 2, 2, 8), 1, -3.0)])
def test_matches_flax_group_norm_and_its_gradient(shape, groups, offset):
  kx, kp, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, shape) * 2.0 + offset
  probe = jax.random.normal(kg, shape)
  ref = nn.GroupNorm(num_groups=groups, epsilon=1e-6,
                     use_fast_variance=False)
  ours = GroupNorm(num_groups=groups, epsilon=1e-6)
  # Jitted throughout: run op by op, each test compiles ~80 programs.
  params = jax.jit(ref.init)(kp, x)
  assert jax.tree_util.tree_map(jnp.shape, jax.eval_shape(ours.init, kp, x)
                                ) == jax.tree_util.tree_map(jnp.shape, params)
  params = jax.tree_util.tree_map(
      lambda p: p + jax.random.normal(kp, p.shape), params)
  np.testing.assert_allclose(jax.jit(ours.apply)(params, x),
                             jax.jit(ref.apply)(params, x),
                             rtol=1e-5, atol=1e-5)

  def loss(module):
    return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)) * probe)

  want = jax.jit(jax.grad(loss(ref), argnums=(0, 1)))(params, x)
  got = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(params, x)
  for g, w in zip(jax.tree_util.tree_leaves(got),
                  jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(
        jnp.max(jnp.abs(w))))


def test_bad_shapes_name_the_groups():
  with pytest.raises(ValueError, match="num_groups=32"):
    GroupNorm(32).init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 48)))


@pytest.mark.parametrize("c,groups", [(96, 32), (12, 4), (8, 1), (32, 32)])
def test_groups_spread_to_their_channels_exactly(c, groups):
  # On the CPU the spread is a product with a 0/1 matrix: it must give the
  # repeat's values bit for bit (one term per sum, at HIGHEST precision).
  from ddpm_jax.models.norm import _spread
  per_group = jax.random.normal(jax.random.PRNGKey(1), (3, groups)) * 1e3
  np.testing.assert_array_equal(
      jax.jit(_spread, static_argnums=1)(per_group, c),
      jnp.repeat(per_group, c // groups, axis=-1))
