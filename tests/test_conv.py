"""The U-Net's convolutions (ddpm_jax/models/conv.py): the 'matmul'
backward pass is the exact gradient of the convolution, and the module is
nn.Conv (same parameters, same output) whatever the backward."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits
from ddpm_jax import from_config
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

  want = jax.jit(jax.grad(loss(_lax_conv), argnums=(0, 1)))(x, kernel)
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


def test_auto_backward_is_resolved_by_one_rule():
  # 'auto': 'matmul' on the CPU for sub-pixel layers and inside a scan,
  # else 'xla'; explicit choices stand everywhere.
  for platform in ("cpu", "gpu", "tpu"):
    for layer in conv.LAYERS:
      for in_scan in (False, True):
        want = "matmul" if platform == "cpu" and (
            in_scan or layer == "subpixel") else "xla"
        assert conv.resolve_backward("auto", layer, in_scan,
                                     platform) == want
        for named in ("xla", "matmul"):
          assert conv.resolve_backward(named, layer, in_scan,
                                       platform) == named
  assert conv.backward_plan("auto", False, "cpu") == {
      "conv": "xla", "subpixel": "matmul"}
  assert conv.backward_plan("auto", True, "gpu") == {
      "conv": "xla", "subpixel": "xla"}
  with pytest.raises(ValueError, match="conv backward"):
    conv.resolve_backward("fast")
  with pytest.raises(ValueError, match="conv layer"):
    conv.resolve_backward("auto", "transposed")


@pytest.mark.parametrize("shape,ksize,cout,padding,stride", [
    ((2, 8, 8, 3), 3, 5, ((0, 1), (0, 1)), 2),   # the U-Net's (TF 'SAME')
    ((2, 8, 8, 3), 3, 5, ((1, 1), (1, 1)), 2),   # diffusers' padding=1
    ((3, 7, 9, 4), 3, 2, ((1, 1), (0, 1)), 2),   # odd sizes, mixed padding
    ((1, 9, 10, 2), 5, 3, ((2, 1), (0, 2)), 3),
    ((2, 6, 6, 3), 2, 4, ((1, 1), (1, 1)), 1)])  # the sub-pixel 2x2 kernel
def test_matmul_backward_of_a_padded_or_strided_convolution(
    shape, ksize, cout, padding, stride):
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(10), 3)
  x = jax.random.normal(kx, shape)
  kernel = jax.random.normal(kk, (ksize, ksize, shape[-1], cout))

  def ref(x, k):
    return jax.lax.conv_general_dilated(x, k, (stride, stride), padding,
                                        dimension_numbers=("NHWC", "HWIO",
                                                           "NHWC"))

  def ours(x, k):
    return conv.conv_matmul_grad(x, k, padding, stride)

  want_y = ref(x, kernel)
  np.testing.assert_array_equal(ours(x, kernel), want_y)
  probe = jax.random.normal(kg, want_y.shape)

  def loss(fn):
    return lambda x, k: jnp.sum(jnp.sin(fn(x, k)) * probe)

  want = jax.jit(jax.grad(loss(ref), argnums=(0, 1)))(x, kernel)
  got = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(x, kernel)
  for g, w in zip(got, want):  # the same sums in another order
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(
        jnp.max(jnp.abs(w))))


def test_strided_module_is_nn_conv_whatever_the_backward():
  """The U-Net's Downsample convolution: nn.Conv's parameters and output."""
  x = jax.random.normal(jax.random.PRNGKey(11), (2, 8, 8, 4))
  for pad in ((0, 1), (1, 1)):
    ref = nn.Conv(4, (3, 3), strides=(2, 2), padding=(pad, pad))
    params = ref.init(jax.random.PRNGKey(12), x)
    params = jax.tree_util.tree_map(
        lambda p: p + jax.random.normal(jax.random.PRNGKey(13), p.shape),
        params)
    want = ref.apply(params, x)
    want_g = jax.jit(jax.grad(lambda p: jnp.sum(ref.apply(p, x) ** 2)))(
        params)
    for backward in conv.BACKWARDS:
      mod = conv.Conv(4, strides=2, padding=(pad, pad), backward=backward)
      assert jax.tree_util.tree_map(jnp.shape, mod.init(
          jax.random.PRNGKey(12), x)) == jax.tree_util.tree_map(jnp.shape,
                                                                params)
      np.testing.assert_array_equal(mod.apply(params, x), want)
      got_g = jax.jit(jax.grad(lambda p: jnp.sum(mod.apply(p, x) ** 2)))(
          params)
      for g, w in zip(jax.tree_util.tree_leaves(got_g),
                      jax.tree_util.tree_leaves(want_g)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(
            jnp.max(jnp.abs(w))))
  with pytest.raises(ValueError, match="odd kernel"):
    conv.Conv(4, kernel_size=(2, 2)).init(jax.random.PRNGKey(12), x)


@pytest.mark.slow
def test_unet_gradient_is_the_same_with_either_backward():
  config = digits.get_config()
  config.model.conv_backward = "xla"
  assert from_config.make_model(config).conv_backward == "xla"
  grads = {}
  x = jax.random.normal(jax.random.PRNGKey(4), (4, 8, 8, 1))
  t = jnp.array([0, 3, 6, 9])
  params = None
  for backward in ("xla", "matmul"):
    model = UNet(ch=16, out_ch=1, ch_mult=(1, 2), num_res_blocks=1,
                 attn_resolutions=(), num_groups=8, dropout=0.0,
                 conv_backward=backward)
    if params is None:
      # The parameters do not depend on the backward pass: initialised
      # once, jitted (op by op, init compiles a program per layer).
      params = jax.jit(lambda x, t: jax.tree_util.tree_map(
          lambda p: p + 0.1, model.init(jax.random.PRNGKey(5), x, t)[
              "params"]))(x, t)
    grads[backward] = jax.jit(jax.grad(lambda p: jnp.mean(model.apply(
        {"params": p}, x, t) ** 2)))(params)
  flat_x = jax.tree_util.tree_leaves(grads["xla"])
  flat_m = jax.tree_util.tree_leaves(grads["matmul"])
  for a, b in zip(flat_x, flat_m):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(
        jnp.max(jnp.abs(a))) + 1e-12)


def _repeat_then_conv(x, kernel):
  return _lax_conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2), kernel)


@pytest.mark.parametrize("backward", ["xla", "matmul"])
@pytest.mark.parametrize("shape,cout", [((2, 4, 4, 3), 5), ((1, 3, 5, 4), 2),
                                        ((2, 8, 8, 16), 16)])
def test_subpixel_upsample_conv_is_repeat_then_conv(shape, cout, backward):
  """Same products, the weights of taps on one input pixel added first:
  equal to float32 rounding (a relative 1e-5 of the output's scale)."""
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(6), 3)
  x = jax.random.normal(kx, shape)
  kernel = jax.random.normal(kk, (3, 3, shape[-1], cout))
  probe = jax.random.normal(kg, (shape[0], 2 * shape[1], 2 * shape[2], cout))

  def loss(fn):
    return lambda x, k: jnp.sum(jnp.sin(fn(x, k)) * probe)

  want = _repeat_then_conv(x, kernel)
  got = jax.jit(conv.upsample_conv, static_argnums=2)(x, kernel, backward)
  assert got.shape == want.shape
  scale = float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
  want_g = jax.jit(jax.grad(loss(_repeat_then_conv), argnums=(0, 1)))(
      x, kernel)
  got_g = jax.jit(jax.grad(loss(
      lambda x, k: conv.upsample_conv(x, k, backward)), argnums=(0, 1)))(
          x, kernel)
  for g, w in zip(got_g, want_g):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(
        jnp.max(jnp.abs(w))))


def test_upsample_conv_module_has_conv_parameters_and_either_method():
  x = jax.random.normal(jax.random.PRNGKey(7), (2, 4, 4, 6))
  ref = conv.Conv(6)
  up = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  params = ref.init(jax.random.PRNGKey(8), up)
  params = jax.tree_util.tree_map(
      lambda p: p + jax.random.normal(jax.random.PRNGKey(9), p.shape), params)
  want = ref.apply(params, up)
  for method in conv.UPSAMPLE_CONVS:
    mod = conv.UpsampleConv(6, method=method)
    assert jax.tree_util.tree_map(jnp.shape, mod.init(
        jax.random.PRNGKey(8), x)) == jax.tree_util.tree_map(jnp.shape,
                                                             params)
    got = mod.apply(params, x)
    if method == "repeat":  # the former computation, bit for bit
      np.testing.assert_array_equal(got, want)
    else:
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(
          jnp.max(jnp.abs(want))))
  with pytest.raises(ValueError, match="model.upsample_conv"):
    conv.UpsampleConv(6, method="pixelshuffle").init(jax.random.PRNGKey(8), x)
