"""The U-Net's convolutions (ddpm_jax/models/conv.py): the 'matmul'
backward pass is the exact gradient of the convolution, and the module is
nn.Conv (same parameters, same output) whatever the backward."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits
from ddpm_jax import training
from ddpm_jax.models import conv
from ddpm_jax.models.unet import UNet


def _lax_conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO",
                                                         "NHWC"))


@pytest.mark.parametrize("shape,ksize,cout", [((2, 8, 8, 3), 3, 5),
                                              ((3, 6, 10, 4), 3, 2),
                                              ((2, 5, 5, 3), 1, 4),
                                              ((1, 7, 9, 2), 5, 3)])
def test_matmul_backward_is_the_convolutions_gradient(shape, ksize, cout):
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, shape)
  kernel = jax.random.normal(kk, (ksize, ksize, shape[-1], cout))
  probe = jax.random.normal(kg, shape[:3] + (cout,))

  def loss(fn):
    return lambda x, k: jnp.sum(jnp.sin(fn(x, k)) * probe)

  want = jax.grad(loss(_lax_conv), argnums=(0, 1))(x, kernel)
  got = jax.jit(jax.grad(loss(conv.conv_matmul_grad), argnums=(0, 1)))(
      x, kernel)
  np.testing.assert_array_equal(conv.conv_matmul_grad(x, kernel),
                                _lax_conv(x, kernel))
  for g, w in zip(got, want):  # the same sums in another order
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(
        jnp.max(jnp.abs(w))))


def test_module_is_nn_conv_whatever_the_backward():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 4))
  ref = nn.Conv(8, (3, 3), padding="SAME")
  params = ref.init(jax.random.PRNGKey(2), x)
  params = jax.tree_util.tree_map(
      lambda p: p + jax.random.normal(jax.random.PRNGKey(3), p.shape), params)
  for backward in conv.BACKWARDS:
    mod = conv.Conv(8, backward=backward)
    assert jax.tree_util.tree_map(jnp.shape, mod.init(
        jax.random.PRNGKey(2), x)) == jax.tree_util.tree_map(jnp.shape,
                                                             params)
    np.testing.assert_array_equal(mod.apply(params, x), ref.apply(params, x))
  assert conv.resolve_backward("auto") == "xla"
  assert conv.resolve_backward("matmul") == "matmul"
  assert conv.resolve_backward("xla") == "xla"
  with pytest.raises(ValueError, match="conv backward"):
    conv.resolve_backward("fast")


def test_unet_gradient_is_the_same_with_either_backward():
  config = digits.get_config()
  config.model.conv_backward = "xla"
  assert training.make_model(config).conv_backward == "xla"
  grads = {}
  for backward in ("xla", "matmul"):
    model = UNet(ch=16, out_ch=1, ch_mult=(1, 2), num_res_blocks=1,
                 attn_resolutions=(), num_groups=8, dropout=0.0,
                 conv_backward=backward)
    x = jax.random.normal(jax.random.PRNGKey(4), (4, 8, 8, 1))
    t = jnp.array([0, 3, 6, 9])
    params = model.init(jax.random.PRNGKey(5), x, t)["params"]
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)
    grads[backward] = jax.jit(jax.grad(lambda p: jnp.mean(model.apply(
        {"params": p}, x, t) ** 2)))(params)
  flat_x = jax.tree_util.tree_leaves(grads["xla"])
  flat_m = jax.tree_util.tree_leaves(grads["matmul"])
  for a, b in zip(flat_x, flat_m):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(
        jnp.max(jnp.abs(a))) + 1e-12)
