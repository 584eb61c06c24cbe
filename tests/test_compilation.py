"""ddpm_jax.compilation: a run-once program compiled for compile speed
gives exactly what plain jax.jit gives."""

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import compilation, from_config
from tests.tiny_configs import tiny_digits_config


def test_jit_once_initialises_the_same_parameters_as_jit():
  config = tiny_digits_config(num_timesteps=10, batch_size=4, one_level=True)
  model = from_config.make_model(config)
  key = jax.random.PRNGKey(3)

  def init():
    return model.init(key, jnp.zeros((1, 8, 8, 1)),
                      jnp.zeros((1,), jnp.int32))["params"]

  got, want = compilation.jit_once(init)(), jax.jit(init)()
  assert (jax.tree_util.tree_structure(got)
          == jax.tree_util.tree_structure(want))
  for a, b in zip(jax.tree_util.tree_leaves(got),
                  jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(a, b)
