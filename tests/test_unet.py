"""The paper's U-Net: parameter counts, shapes, the original's init."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import celebahq256, cifar10, digits
from ddpm_jax import from_config
from ddpm_jax.models.unet import Dropout, UNet, eps_fn, timestep_embedding


def param_count(config):
  model = from_config.make_model(config)
  s, c = config.data.image_size, config.data.channels
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, s, s, c)),
      jnp.zeros((1,), jnp.int32)))
  return sum(x.size for x in jax.tree_util.tree_leaves(shapes))


def test_cifar10_unet_has_35746307_parameters():
  # diffusers' UNet2DModel counts the same for google/ddpm-cifar10-32.
  assert param_count(cifar10.get_config()) == 35_746_307


def test_256_unet_is_about_114m():
  assert param_count(celebahq256.get_config()) == 113_673_219


def test_forward_shapes_init_and_dropout():
  model = UNet(ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1,
               attn_resolutions=(4,), dropout=0.5)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  t = jnp.array([0, 999])
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x, t)["params"]
  names = set(params)
  assert {"down_1_attn_0", "mid_attn_1", "up_1_attn_0", "up_1_upsample",
          "down_0_downsample", "temb_dense0", "conv_out"} <= names
  assert "down_0_attn_0" not in names  # 8x8 is not an attention resolution
  # The original zero-initialises the output conv (and each branch's last
  # layer): the untrained network predicts eps = 0.
  f = eps_fn(model)
  assert eps_fn(model) is f  # cached: jit sees one static function
  g = jax.jit(f)  # eager: ~4 s more
  out = g(params, x, t, None)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert float(jnp.abs(out).max()) == 0.0
  assert float(jnp.abs(params["down_0_block_0"]["conv2"]["kernel"]).max()) == 0
  assert float(jnp.abs(params["mid_attn_1"]["proj_out"]["kernel"]).max()) == 0
  # With non-zero weights, dropout makes train mode stochastic. (NumPy's
  # noise: a jitted draw per array compiled for 6 s in the suite.)
  rng = np.random.default_rng(2)
  params = jax.tree_util.tree_map(
      lambda p: p + np.float32(0.05) * rng.standard_normal(p.shape,
                                                           np.float32),
      params)
  a = g(params, x, t, None)
  b = g(params, x, t, None)
  c = g(params, x, t, jax.random.PRNGKey(3))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_timestep_embedding_matches_original_formula():
  t = np.array([0, 1, 17, 999])
  dim = 16
  half = dim // 2
  # The original computes the arguments t * w_i in float32 (as we do):
  # mirror that order, then take sin/cos exactly. Large arguments (999 w_0)
  # make float32 argument rounding matter, hence the mirroring.
  freqs = np.exp(np.arange(half, dtype=np.float32) *
                 np.float32(-np.log(10000) / (half - 1)))
  args = (t[:, None].astype(np.float32) * freqs[None]).astype(np.float64)
  want = np.concatenate([np.sin(args), np.cos(args)], 1)
  got = np.asarray(timestep_embedding(jnp.asarray(t), dim))
  np.testing.assert_allclose(got[:3], want[:3], rtol=1e-5, atol=1e-6)
  # XLA's float32 sin/cos reduce arguments of a few hundred (999 * w_1 is
  # ~270) with float32 range reduction: ~2.5e-5 absolute. Bound for that
  # documented cause, at t = 999 only.
  np.testing.assert_allclose(got[3], want[3], rtol=0, atol=5e-5)


def test_bad_resolution_is_refused():
  with pytest.raises(ValueError, match="divisible"):
    UNet(ch=32, ch_mult=(1, 2, 2)).init(jax.random.PRNGKey(0),
                                        jnp.zeros((1, 6, 6, 3)),
                                        jnp.zeros((1,), jnp.int32))


def test_digits_config_is_small():
  assert param_count(digits.get_config()) < 2_000_000


class _Block(nn.Module):
  """A module holding one dropout layer, as the residual blocks do."""
  layer: type
  rng_impl: str = ""

  @nn.compact
  def __call__(self, x):
    if self.layer is nn.Dropout:
      return nn.Dropout(0.3)(x, deterministic=False)
    return Dropout(0.3, self.rng_impl)(x, deterministic=False)


def _dropped(layer, rng_impl="", shape=(8, 16, 16, 32), seed=0):
  x = jnp.ones(shape)
  return _Block(layer, rng_impl).apply({}, x, rngs={
      "dropout": jax.random.PRNGKey(seed)})


def test_dropout_threefry2x32_is_flax_dropout_bit_for_bit():
  np.testing.assert_array_equal(_dropped(Dropout, "threefry2x32"),
                                _dropped(nn.Dropout))


def test_dropout_threefry4x32_masks():
  y = np.asarray(_dropped(Dropout, "threefry4x32"))
  kept = y != 0
  # Kept values are scaled by 1 / keep_prob, as nn.Dropout's.
  np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
  # 65536 Bernoulli(0.7) draws: the kept fraction within 5 sigma.
  n = y.size
  assert abs(kept.mean() - 0.7) < 5 * np.sqrt(0.7 * 0.3 / n)
  # Another generator than nn.Dropout's, and it follows the key.
  assert (kept != (np.asarray(_dropped(nn.Dropout)) != 0)).mean() > 0.3
  assert (kept != (np.asarray(_dropped(Dropout, "threefry4x32", seed=1))
                   != 0)).mean() > 0.3
  # Independent across positions: neighbours agree as often as chance does.
  flat = kept.reshape(-1)
  agree = (flat[1:] == flat[:-1]).mean()
  assert abs(agree - (0.7**2 + 0.3**2)) < 0.02


def test_dropout_rng_impl_is_checked():
  with pytest.raises(ValueError, match="model.dropout_rng_impl"):
    _dropped(Dropout, "philox4x32")


# The residual and attention blocks against NumPy written from the paper's
# description (float64), with random non-zero weights: at init the blocks'
# last layers are zero, so a fresh block is the identity and cannot show a
# missing residual or a softmax over the wrong axis.


def np_group_norm(x, p, groups, eps=1e-6):
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = ((g - mean)**2).mean(axis=(1, 2, 4), keepdims=True)
  out = ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)
  return out * p["scale"] + p["bias"]


def np_swish(x):
  return x / (1.0 + np.exp(-x))


def np_conv3x3(x, p):
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  out = sum(np.einsum("bhwc,co->bhwo", xp[:, i:i + h, j:j + w],
                      p["kernel"][i, j]) for i in range(3) for j in range(3))
  return out + p["bias"]


def np_dense(x, p):
  return x @ p["kernel"] + p["bias"]


def np_resnet_block(p, x, temb, groups):
  h = np_conv3x3(np_swish(np_group_norm(x, p["norm1"], groups)), p["conv1"])
  h = h + np_dense(np_swish(temb), p["temb_proj"])[:, None, None, :]
  h = np_conv3x3(np_swish(np_group_norm(h, p["norm2"], groups)), p["conv2"])
  skip = np_dense(x, p["nin_shortcut"]) if "nin_shortcut" in p else x
  return skip + h


def np_attn_block(p, x, groups, head_dim):
  b, hgt, wid, c = x.shape
  heads = c // head_dim
  h = np_group_norm(x, p["norm"], groups).reshape(b, hgt * wid, c)
  q, k, v = (np_dense(h, p[n]).reshape(b, hgt * wid, heads, head_dim)
             for n in ("q", "k", "v"))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim)
  weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
  weights /= weights.sum(axis=-1, keepdims=True)  # over the keys
  out = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, hgt, wid, c)
  return x + np_dense(out, p["proj_out"])


def random_params(params, seed):
  leaves, treedef = jax.tree_util.tree_flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_unflatten(
      treedef, [rng.normal(0.0, 0.4, p.shape).astype(np.float32)
                for p in leaves])


def to_np64(tree):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


@pytest.mark.parametrize("in_ch,out_ch", [(8, 8), (8, 16)])
def test_resnet_block_matches_numpy(in_ch, out_ch):
  from ddpm_jax.models.unet import ResnetBlock
  block = ResnetBlock(out_ch, num_groups=4)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 5, in_ch)).astype(np.float32)
  temb = rng.normal(size=(2, 12)).astype(np.float32)
  params = random_params(
      block.init(jax.random.PRNGKey(0), x, temb)["params"], 1)
  assert ("nin_shortcut" in params) == (in_ch != out_ch)
  got = jax.jit(block.apply)({"params": params}, x, temb)
  want = np_resnet_block(to_np64(params), x.astype(np.float64),
                         temb.astype(np.float64), 4)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# 'cudnn' is tested on a GPU below.
@pytest.mark.parametrize("impl", ["matmul", "xla"])
@pytest.mark.parametrize("head_dim", [None, 4])
def test_attention_block_matches_numpy(head_dim, impl):
  from ddpm_jax.models.unet import AttnBlock
  block = AttnBlock(num_groups=4, head_dim=head_dim, attention_impl=impl)
  x = np.random.default_rng(2).normal(size=(2, 3, 4, 8)).astype(np.float32)
  params = random_params(block.init(jax.random.PRNGKey(0), x)["params"], 3)
  got = jax.jit(block.apply)({"params": params}, x)
  want = np_attn_block(to_np64(params), x.astype(np.float64), 4,
                       head_dim or 8)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_attention_impl_is_checked():
  from ddpm_jax.models.unet import attend
  q = jnp.ones((1, 4, 1, 8))
  with pytest.raises(ValueError, match="model.attention_impl"):
    attend(q, q, q, "flash")
  if jax.default_backend() != "gpu":
    with pytest.raises(ValueError, match="'cudnn' needs a GPU"):
      attend(q.astype(jnp.bfloat16), q, q, "cudnn")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
def test_cudnn_attention_in_float32_is_the_matmul_path():
  from ddpm_jax.models.unet import attend
  q, k, v = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 16, 1, 32))
  np.testing.assert_array_equal(jax.jit(attend, static_argnums=3)(
      q, k, v, "cudnn"), jax.jit(attend, static_argnums=3)(q, k, v, "matmul"))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize("head_dim", [None, 64])
def test_cudnn_attention_in_bfloat16_is_as_close_as_matmul(head_dim):
  # The CIFAR-10 model's shapes: 16x16 positions, 256 channels, one head.
  from ddpm_jax.models.unet import AttnBlock
  x = np.random.default_rng(2).normal(size=(4, 16, 16, 256)).astype(
      np.float32)
  errors = {}
  for impl in ("matmul", "cudnn"):
    block = AttnBlock(head_dim=head_dim, dtype=jnp.bfloat16,
                      attention_impl=impl)
    params = random_params(block.init(jax.random.PRNGKey(0), x)["params"],
                           3)
    params = jax.tree_util.tree_map(lambda p: p / 8, params)
    got = np.asarray(jax.jit(block.apply)({"params": params}, x), np.float64)
    want = np_attn_block(to_np64(params), x.astype(np.float64), 32,
                         head_dim or 256)
    errors[impl] = np.abs(got - want).max() / np.abs(want - x).max()
  assert errors["cudnn"] <= 2 * errors["matmul"] + 1e-3, errors
