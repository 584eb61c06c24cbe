"""The original TF checkpoints: a checkpoint written with the original
variable names imports and matches the diffusers model of the same values."""

import re

import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.interop import ConversionError, sources, tf_checkpoint
from ddpm_jax.models.unet import eps_fn, unet_from_config
from tests.test_interop_diffusers import (make_torch_unet, torch_forward)

diffusers = pytest.importorskip("diffusers")

# A small model with the original's options (one head, sin first, shift 1,
# eps 1e-6, TF 'SAME' downsampling), attention at 8x8 of a 16x16 image.
TINY_DDPM = {
    "block_out_channels": [32, 64], "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": None, "flip_sin_to_cos": False, "freq_shift": 1,
    "norm_eps": 1e-6, "downsample_padding": 0, "norm_num_groups": 32,
    "in_channels": 3, "out_channels": 3, "sample_size": 16,
}

_LAYER = {"norm1": "norm1", "conv1": "conv1", "time_emb_proj": "temb_proj",
          "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut",
          "group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
          "to_out.0": "proj_out"}


def original_name_and_value(name, value, levels):
  """The test's own map from a diffusers tensor to the original TF variable
  (written from diffusion_tf/models/unet.py and nn.py, independently of
  ddpm_jax.interop)."""
  fixed = {"time_embedding.linear_1": "temb/dense0",
           "time_embedding.linear_2": "temb/dense1",
           "conv_in": "conv_in", "conv_norm_out": "norm_out",
           "conv_out": "conv_out"}
  module, leaf = name.rsplit(".", 1)
  if module in fixed:
    scope = fixed[module]
  else:
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\."
                     r"(.+)", module)
    mid = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", module)
    res = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(down|up)samplers\.0\.conv",
                       module)
    if m:
      side, k, kind, j, layer = m.groups()
      level = int(k) if side == "down" else levels - 1 - int(k)
      unit = "block" if kind == "resnets" else "attn"
      scope = f"{side}_{level}/{unit}_{j}/{_LAYER[layer]}"
    elif mid:
      kind, j, layer = mid.groups()
      unit = "block" if kind == "resnets" else "attn"
      scope = f"mid/{unit}_{int(j) + 1}/{_LAYER[layer]}"
    elif res:
      side, k, _ = res.groups()
      level = int(k) if side == "down" else levels - 1 - int(k)
      kind = "downsample" if side == "down" else "upsample"
      scope = f"{side}_{level}/{kind}/conv"
    else:
      raise AssertionError(name)
  is_norm = scope.split("/")[-1].startswith("norm")
  if is_norm:
    tf_leaf = {"weight": "gamma", "bias": "beta"}[leaf]
  else:
    tf_leaf = {"weight": "W", "bias": "b"}[leaf]
  value = np.asarray(value)
  if tf_leaf == "W":
    if value.ndim == 4 and scope.endswith("nin_shortcut"):
      value = value[:, :, 0, 0].T          # 1x1 conv -> nin (in, out)
    elif value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    else:
      value = value.T                      # (out, in) -> (in, out)
  return f"model/{scope}/{tf_leaf}", np.ascontiguousarray(value)


def write_original_checkpoint(prefix, variables):
  import tensorflow as tf
  with tf.Graph().as_default():
    tf_vars = [tf.compat.v1.Variable(v, name=k) for k, v in variables.items()]
    saver = tf.compat.v1.train.Saver(tf_vars)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      saver.save(sess, prefix)
  return prefix


def original_variables(unet, levels, with_ema=True, with_adam=True):
  variables = {}
  for k, v in unet.state_dict().items():
    name, value = original_name_and_value(k, v.numpy(), levels)
    if with_ema:
      variables[name + "/ExponentialMovingAverage"] = value
      variables[name] = value + 1.0  # raw weights differ from the EMA ones
    else:
      variables[name] = value
    if with_adam:
      variables[name + "/Adam"] = np.zeros_like(value)
  variables["global_step"] = np.int64(790000)
  return variables


@pytest.mark.slow
def test_original_checkpoint_matches_diffusers_model(torch, tmp_path):
  unet = make_torch_unet(torch, TINY_DDPM, seed=11)
  prefix = write_original_checkpoint(str(tmp_path / "model.ckpt-790000"),
                                     original_variables(unet, levels=2))
  model_cfg, ch, params, used_ema = tf_checkpoint.read_tf_checkpoint(
      prefix, image_size=16)
  assert used_ema
  assert (model_cfg.ch, tuple(model_cfg.ch_mult), model_cfg.num_res_blocks,
          tuple(model_cfg.attn_resolutions)) == (32, (1, 2), 2, (8,))
  x = np.random.default_rng(0).normal(size=(3, 16, 16, 3)).astype(np.float32)
  t = [0, 400, 999]
  ours = np.asarray(eps_fn(unet_from_config(model_cfg, ch))(
      params, jnp.asarray(x), jnp.asarray(t)))
  ref = torch_forward(torch, unet, x, t)
  assert np.abs(ref).max() > 0.1
  np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)

  # The raw (non-EMA) weights on request; a directory finds its checkpoint.
  _, _, raw, used_ema = tf_checkpoint.read_tf_checkpoint(
      prefix, image_size=16, prefer_ema=False)
  assert not used_ema
  np.testing.assert_array_equal(raw["conv_in"]["kernel"],
                                params["conv_in"]["kernel"] + 1.0)
  config, _, what = sources.load_model(str(tmp_path), image_size=16)
  assert "EMA" in what and config.data.image_size == 16
  assert config.diffusion.schedule == "linear"


def test_bad_original_checkpoints(torch, tmp_path):
  unet = make_torch_unet(torch, TINY_DDPM, seed=12)
  variables = original_variables(unet, levels=2, with_ema=False,
                                 with_adam=False)
  with pytest.raises(ConversionError, match="pass --image_size"):
    sources.load_model(write_original_checkpoint(
        str(tmp_path / "a" / "model.ckpt-1"), variables), image_size=None)
  broken = dict(variables)
  broken["model/conv_in/b"] = np.zeros(7, np.float32)
  del broken["model/mid/attn_1/q/b"]
  prefix = write_original_checkpoint(str(tmp_path / "b" / "model.ckpt-1"),
                                     broken)
  with pytest.raises(ConversionError) as e:
    tf_checkpoint.read_tf_checkpoint(prefix, image_size=16)
  assert "model/conv_in/b has shape (7,), expected (32,)" in str(e.value)
  assert "model/mid/attn_1/q/b missing" in str(e.value)
  with pytest.raises(ConversionError, match="index not found"):
    tf_checkpoint.read_tf_checkpoint(str(tmp_path / "nope.ckpt"), 16)
  with pytest.raises(ConversionError, match="not divisible"):
    tf_checkpoint.read_tf_checkpoint(prefix.replace("/b/", "/a/"), 15)


def test_nonfinite_original_weights_are_refused_by_name(torch, tmp_path):
  unet = make_torch_unet(torch, TINY_DDPM, seed=12)
  variables = original_variables(unet, levels=2, with_ema=False,
                                 with_adam=False)
  variables["model/conv_in/b"] = np.full(32, np.nan, np.float32)
  prefix = write_original_checkpoint(str(tmp_path / "model.ckpt-1"),
                                     variables)
  with pytest.raises(ConversionError) as e:
    sources.load_model(prefix, image_size=16)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(prefix), msg
  assert "conv_in.bias hold NaN or infinite values" in msg, msg
