"""diffusers UNet2DModel / DDPMScheduler <-> ddpm-jax: forward parity,
round trips, DDPMPipeline end to end, and refusals."""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import schedules
from ddpm_jax.interop import ConversionError
from ddpm_jax.interop import diffusers_scheduler as dsched
from ddpm_jax.interop import diffusers_unet as dunet
from ddpm_jax.models.unet import eps_fn, unet_from_config
from ddpm_jax.samplers.ancestral import sample_with_noise
from tests.reference_models import nchw, nhwc

diffusers = pytest.importorskip("diffusers")

# google/ddpm-cifar10-32's config.json (the Hub file, minus bookkeeping).
CIFAR10_CONFIG = {
    "_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                         "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
    "in_channels": 3, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 32, "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D",
                       "UpBlock2D"],
}

# The block layout of google/ddpm-{celebahq,church,bedroom,cat}-256 (widths
# 128 x (1,1,2,2,4,4), attention at 16 = level 4), at a small width and size.
LAYOUT_256_SMALL = dict(
    CIFAR10_CONFIG, block_out_channels=[32, 32, 64, 64, 128, 128],
    down_block_types=["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
    sample_size=64)

# UNet2DModel's own defaults where DDPM differs (several heads, sin/cos
# flipped, freq_shift 0, symmetric downsample padding, eps 1e-5), mish and
# one channel.
MULTIHEAD_CONFIG = {
    "_class_name": "UNet2DModel", "block_out_channels": [32, 64],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1,
    "attention_head_dim": 8, "norm_num_groups": 8, "act_fn": "mish",
    "in_channels": 1, "out_channels": 1, "sample_size": 16, "dropout": 0.1,
}


def randomize_torch(torch, module, seed):
  """Every parameter random (norm scales around 1), so that no layer is
  trivially zero or identity."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if p.ndim == 1:
        base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
        p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
      else:
        fan_in = p[0].numel()
        p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
  return module.eval()


def make_torch_unet(torch, cfg, seed=0):
  kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")}
  return randomize_torch(torch, diffusers.UNet2DModel(**kwargs), seed)


def import_unet(torch_unet, tmp_path, name="model"):
  d = tmp_path / name
  torch_unet.save_pretrained(str(d), safe_serialization=True)
  return dunet.read_model_dir(str(d))


def torch_forward(torch, unet, x_nhwc, t):
  with torch.no_grad():
    out = unet(torch.from_numpy(nchw(x_nhwc)),
               torch.from_numpy(np.asarray(t, np.int64))).sample
  return nhwc(out.numpy())


def forward_parity(torch, torch_unet, tmp_path, batches):
  model_cfg, size, ch, params = import_unet(torch_unet, tmp_path)
  apply = jax.jit(eps_fn(unet_from_config(model_cfg, ch)))
  rng = np.random.default_rng(0)
  for t in batches:
    x = rng.normal(size=(len(t), size, size, ch)).astype(np.float32)
    ours = np.asarray(apply(params, jnp.asarray(x), jnp.asarray(t, jnp.int32)))
    ref = torch_forward(torch, torch_unet, x, t)
    assert np.abs(ref).max() > 0.1  # a live network, not a zero output
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5,
                               err_msg=f"t={t}")
  return model_cfg


@pytest.mark.slow
def test_cifar10_forward_parity(torch, tmp_path):
  unet = make_torch_unet(torch, CIFAR10_CONFIG)
  assert sum(p.numel() for p in unet.parameters()) == 35_746_307
  model_cfg = forward_parity(torch, unet, tmp_path,
                             batches=[[0, 500, 999], [1, 250, 998]])
  assert tuple(model_cfg.ch_mult) == (1, 2, 2, 2)
  assert tuple(model_cfg.attn_resolutions) == (16,)


@pytest.mark.slow
def test_256_layout_forward_parity(torch, tmp_path):
  unet = make_torch_unet(torch, LAYOUT_256_SMALL, seed=1)
  model_cfg = forward_parity(torch, unet, tmp_path,
                             batches=[[3, 777], [999, 0]])
  assert tuple(model_cfg.ch_mult) == (1, 1, 2, 2, 4, 4)
  assert tuple(model_cfg.attn_resolutions) == (4,)  # 64 / 2**4


def test_multihead_and_diffusers_defaults_forward_parity(torch, tmp_path):
  unet = make_torch_unet(torch, MULTIHEAD_CONFIG, seed=2)
  model_cfg = forward_parity(torch, unet, tmp_path,
                             batches=[[0, 10, 500, 999], [42, 43, 44, 45]])
  assert model_cfg.attn_head_dim == 8
  assert model_cfg.flip_sin_to_cos and model_cfg.freq_shift == 0
  assert model_cfg.downsample_padding == 1 and model_cfg.act == "mish"


def test_old_attention_names_import(torch, tmp_path):
  # Hub checkpoints saved before diffusers 0.14 name the attention layers
  # query/key/value/proj_attn.
  from safetensors.numpy import save_file
  unet = make_torch_unet(torch, MULTIHEAD_CONFIG, seed=3)
  _, _, _, params = import_unet(unet, tmp_path, "new")
  old_names = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.",
               ".to_out.0.": ".proj_attn."}
  state = {}
  for k, v in unet.state_dict().items():
    for new, old in old_names.items():
      k = k.replace(new, old)
    state[k] = v.numpy()
  assert any(".query." in k for k in state)
  d = tmp_path / "old"
  d.mkdir()
  save_file(state, str(d / dunet.WEIGHTS_NAME))
  (d / "config.json").write_text(json.dumps(MULTIHEAD_CONFIG))
  _, _, _, old_params = dunet.read_model_dir(str(d))
  jax.tree_util.tree_map(np.testing.assert_array_equal, old_params, params)


def random_params(model_cfg, size, ch, seed, out_ch=None):
  shapes = dunet.params_shape(unet_from_config(model_cfg, ch, out_ch), size,
                              ch)
  leaves, tree = jax.tree_util.tree_flatten(shapes)
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_unflatten(tree, [
      (rng.normal(size=l.shape) / np.sqrt(max(1, np.prod(l.shape[:-1])))
       ).astype(np.float32) for l in leaves])


@pytest.mark.slow
def test_export_loads_in_diffusers_with_same_outputs(torch, tmp_path):
  model_cfg, size, ch = dunet.model_config_from_diffusers(MULTIHEAD_CONFIG)
  params = random_params(model_cfg, size, ch, seed=4)
  out = tmp_path / "export"
  dunet.write_model_dir(str(out), params, model_cfg, size, ch)
  unet = diffusers.UNet2DModel.from_pretrained(str(out)).eval()
  x = np.random.default_rng(5).normal(size=(3, size, size, ch)).astype(
      np.float32)
  t = [0, 123, 999]
  # Jitted: op by op, the forward pass compiles ~170 programs.
  ours = np.asarray(jax.jit(eps_fn(unet_from_config(model_cfg, ch)))(
      params, jnp.asarray(x), jnp.asarray(t)))
  np.testing.assert_allclose(ours, torch_forward(torch, unet, x, t),
                             rtol=0, atol=1e-5)


def test_learned_variance_model_round_trip(torch, tmp_path):
  """A 2C-output (learned_range) model: exported, diffusers loads it with
  the same outputs; read back, its config says learned_range and v."""
  from ddpm_jax.interop import sources
  model_cfg, size, ch = dunet.model_config_from_diffusers(MULTIHEAD_CONFIG)
  params = random_params(model_cfg, size, ch, seed=8, out_ch=2 * ch)
  sched = {"_class_name": "DDPMScheduler", "variance_type": "learned_range",
           "prediction_type": "v_prediction"}
  out = tmp_path / "learned"
  dunet.write_model_dir(str(out), params, model_cfg, size, ch,
                        scheduler_config=sched)
  unet = diffusers.UNet2DModel.from_pretrained(str(out)).eval()
  assert unet.config.out_channels == 2 * ch
  x = np.random.default_rng(9).normal(size=(2, size, size, ch)).astype(
      np.float32)
  t = [3, 700]
  ours = np.asarray(jax.jit(eps_fn(unet_from_config(model_cfg, ch, 2 * ch)))(
      params, jnp.asarray(x), jnp.asarray(t)))
  np.testing.assert_allclose(ours, torch_forward(torch, unet, x, t),
                             rtol=0, atol=1e-5)
  config, back, _ = sources.load_diffusers(str(out))
  assert config.diffusion.learned_variance == "learned_range"
  assert config.diffusion.prediction == "v"
  assert back["conv_out"]["kernel"].shape[-1] == 2 * ch
  # The same weights with a fixed-variance scheduler config: refused.
  (out / "scheduler_config.json").write_text(json.dumps(
      {"_class_name": "DDPMScheduler", "variance_type": "fixed_small"}))
  with pytest.raises(ConversionError, match="out_channels=2"):
    sources.load_diffusers(str(out))


@pytest.mark.slow
def test_diffusers_to_ours_to_diffusers_is_bit_identical(torch, tmp_path):
  from safetensors.numpy import load_file
  unet = make_torch_unet(torch, CIFAR10_CONFIG, seed=6)
  model_cfg, size, ch, params = import_unet(unet, tmp_path)
  out = tmp_path / "again"
  dunet.write_model_dir(str(out), params, model_cfg, size, ch)
  back = load_file(str(out / dunet.WEIGHTS_NAME))
  ref = {k: v.numpy() for k, v in unet.state_dict().items()}
  assert set(back) == set(ref)
  for k in ref:
    assert back[k].dtype == ref[k].dtype and back[k].shape == ref[k].shape, k
    assert np.array_equal(back[k], ref[k]), k
  # The config survives too (the options that shape the network).
  written = json.loads((out / "config.json").read_text())
  for k, v in CIFAR10_CONFIG.items():
    if k != "_class_name":
      assert written[k] == v, k


@pytest.mark.parametrize("prediction_type,variance_type", [
    ("epsilon", "fixed_small"), ("sample", "fixed_large"),
    ("v_prediction", "learned_range")])
@pytest.mark.slow
def test_ddpm_pipeline_end_to_end_with_injected_noise(
    torch, tmp_path, monkeypatch, prediction_type, variance_type):
  import diffusers.pipelines.ddpm.pipeline_ddpm as pipeline_mod
  import diffusers.schedulers.scheduling_ddpm as scheduler_mod
  num_t = 20
  learned = variance_type == "learned_range"
  unet = make_torch_unet(torch, dict(MULTIHEAD_CONFIG, dropout=0.0,
                                     out_channels=2 if learned else 1),
                         seed=7)
  sched = diffusers.DDPMScheduler(num_train_timesteps=num_t, beta_start=1e-3,
                                  beta_end=0.2, beta_schedule="linear",
                                  variance_type=variance_type,
                                  prediction_type=prediction_type,
                                  clip_sample=True)
  drawn = []
  real_randn = scheduler_mod.randn_tensor

  def recording_randn(*args, **kwargs):
    drawn.append(real_randn(*args, **kwargs))
    return drawn[-1]

  monkeypatch.setattr(pipeline_mod, "randn_tensor", recording_randn)
  monkeypatch.setattr(scheduler_mod, "randn_tensor", recording_randn)
  pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
  pipe.set_progress_bar_config(disable=True)
  with torch.no_grad():
    ref = pipe(batch_size=2, generator=torch.Generator().manual_seed(0),
               num_inference_steps=num_t, output_type="np").images
  # x_T, then one z for each of the steps t = T-1 .. 1.
  assert len(drawn) == num_t
  x_T = nhwc(drawn[0].numpy())
  noise = np.zeros((num_t,) + x_T.shape, np.float32)
  for i, z in enumerate(drawn[1:]):
    noise[num_t - 1 - i] = nhwc(z.numpy())

  model_cfg, size, ch, params = import_unet(unet, tmp_path)
  out_ch = params["conv_out"]["kernel"].shape[-1]
  assert out_ch == (2 if learned else 1)
  config = dsched.settings_from_scheduler_config(dict(sched.config))
  schedule = schedules.schedule_from_config(
      config.diffusion.schedule, config.diffusion.num_timesteps,
      beta_start=config.diffusion.beta_start,
      beta_end=config.diffusion.beta_end)
  x0 = sample_with_noise(
      params, eps_fn(unet_from_config(model_cfg, ch, out_ch)), schedule,
      jnp.asarray(x_T), jnp.asarray(noise),
      clip_denoised=config.sampling.clip_denoised,
      variance=config.diffusion.learned_variance or config.sampling.variance,
      prediction=config.diffusion.prediction)
  ours = np.clip(np.asarray(x0) / 2 + 0.5, 0, 1)
  assert ref.std() > 0.05
  np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


# --- scheduler configs -------------------------------------------------------


def test_scheduler_config_import():
  google = {"_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1",
            "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
            "clip_sample": True, "num_train_timesteps": 1000,
            "trained_betas": None, "variance_type": "fixed_small"}
  s = dsched.settings_from_scheduler_config(google)
  assert s.diffusion.schedule == "linear" and s.diffusion.num_timesteps == 1000
  assert s.sampling.variance == "fixedsmall" and s.sampling.clip_denoised
  for name, ours in [("scaled_linear", "quad"), ("squaredcos_cap_v2", "cosine"),
                     ("sigmoid", "sigmoid_geodiff")]:
    got = dsched.settings_from_scheduler_config({"beta_schedule": name})
    assert got.diffusion.schedule == ours
  large = dsched.settings_from_scheduler_config(
      {"variance_type": "fixed_large", "clip_sample": False})
  assert large.sampling.variance == "fixedlarge"
  assert not large.sampling.clip_denoised
  custom = dsched.settings_from_scheduler_config(
      {"num_train_timesteps": 3, "trained_betas": [0.1, 0.2, 0.3]})
  assert custom.diffusion.schedule == "custom"
  assert custom.diffusion.betas == [0.1, 0.2, 0.3]


@pytest.mark.parametrize("field,value,match", [
    ("prediction_type", "x_prev", "prediction_type='x_prev'"),
    ("variance_type", "learned", "variance_type='learned'"),
    ("thresholding", True, "thresholding=True"),
    ("beta_schedule", "exponential", "beta_schedule='exponential'"),
    ("clip_sample_range", 2.0, "clip_sample_range=2.0"),
    ("rescale_betas_zero_snr", True, "rescale_betas_zero_snr=True"),
    ("some_new_option", 3, "some_new_option=3"),
])
def test_scheduler_config_refusals(field, value, match):
  with pytest.raises(ConversionError, match=match):
    dsched.settings_from_scheduler_config({field: value})


@pytest.mark.parametrize("name,variance", [("linear", "fixedsmall"),
                                           ("cosine", "fixedlarge"),
                                           ("warmup10", "fixedsmall")])
def test_scheduler_config_export_matches_diffusers_tables(name, variance):
  from configs import default
  config = default.get_default_config()
  config.diffusion.update({"schedule": name, "num_timesteps": 100,
                           "beta_start": 1e-4, "beta_end": 0.02})
  config.sampling.update({"variance": variance, "clip_denoised": True,
                          "mean_from": "x0"})
  cfg = dsched.scheduler_config_from_settings(config)
  ref = diffusers.DDPMScheduler.from_config(cfg)
  assert ref.config.variance_type == {"fixedsmall": "fixed_small",
                                      "fixedlarge": "fixed_large"}[variance]
  ours = schedules.schedule_from_config(name, 100, beta_start=1e-4,
                                        beta_end=0.02)
  np.testing.assert_allclose(np.asarray(ours.betas), ref.betas.numpy(),
                             rtol=1e-6)
  # diffusers derives alpha-bar from float32 betas, ours from float64 ones.
  # Where beta is near 1 (cosine's last, clipped at 0.999), 1 - beta keeps
  # few digits in float32 (1 - f32(0.999) is 1.3e-5 off relative), so
  # alpha-bar is compared where beta < 0.5; the betas above cover all t.
  keep = np.asarray(ours.betas) < 0.5
  ref_abar = np.cumprod(1.0 - ref.betas.double().numpy())
  np.testing.assert_allclose(np.asarray(ours.alphas_cumprod)[keep],
                             ref_abar[keep], rtol=1e-5)
  back = dsched.settings_from_scheduler_config(cfg)
  assert back.sampling.variance == variance


# --- refusals and bad files --------------------------------------------------


@pytest.mark.parametrize("field,value,match", [
    ("down_block_types", ["CrossAttnDownBlock2D", "DownBlock2D",
                          "DownBlock2D", "DownBlock2D"],
     "down_block_types='CrossAttnDownBlock2D'"),
    ("time_embedding_type", "fourier", "time_embedding_type='fourier'"),
    ("resnet_time_scale_shift", "scale_shift", "resnet_time_scale_shift"),
    ("out_channels", 5, "out_channels=5"),
    ("act_fn", "tanh", "act_fn='tanh'"),
    ("num_class_embeds", 10, "num_class_embeds=10"),
    ("block_out_channels", [128, 192, 256, 256], "block_out_channels"),
    ("up_block_types", ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D",
                        "UpBlock2D"], "same resolutions"),
    ("attention_head_dim", 48, "attention_head_dim=48"),
    # Hostile sizes: refused before any array is made (this one used to
    # try to allocate 400 TB).
    ("sample_size", 10**7, r"sample_size=10000000 .* at least \d.* TiB of "
                           "activations"),
    ("sample_size", 0, "sample_size=0"),
])
def test_unet_config_refusals(field, value, match):
  with pytest.raises(ConversionError, match=match):
    dunet.model_config_from_diffusers(dict(CIFAR10_CONFIG, **{field: value}))


def small_model_dir(torch, tmp_path, name="m"):
  unet = make_torch_unet(torch, MULTIHEAD_CONFIG, seed=8)
  d = tmp_path / name
  unet.save_pretrained(str(d), safe_serialization=True)
  return d, unet


def test_bad_model_directories(torch, tmp_path):
  from safetensors.numpy import load_file, save_file
  with pytest.raises(ConversionError, match="has no config.json"):
    dunet.read_model_dir(str(tmp_path))
  d, _ = small_model_dir(torch, tmp_path)
  state = load_file(str(d / dunet.WEIGHTS_NAME))
  # Wrong shapes: the first mismatches are listed.
  bad = dict(state)
  bad["conv_in.weight"] = np.zeros((16, 1, 3, 3), np.float32)
  del bad["conv_out.bias"]
  bad["extra.weight"] = np.zeros(3, np.float32)
  save_file(bad, str(d / dunet.WEIGHTS_NAME))
  with pytest.raises(ConversionError) as e:
    dunet.read_model_dir(str(d))
  msg = str(e.value)
  assert "\n" not in msg
  assert "conv_in.weight has shape (16, 1, 3, 3), expected (32, 1, 3, 3)" in msg
  assert "conv_out.bias missing" in msg and "extra.weight unexpected" in msg
  # Random bytes, and a truncated file: not a guess at their dtype.
  weights = d / dunet.WEIGHTS_NAME
  good = weights.read_bytes()
  for damaged in (os.urandom(1000), good[:-3]):
    weights.write_bytes(damaged)
    with pytest.raises(ConversionError) as e:
      dunet.read_model_dir(str(d))
    assert str(e.value).startswith(f"{weights} is not a valid safetensors "
                                   f"file (Error while deserializing header"
                                   ), str(e.value)
    assert str(e.value).endswith("download it again"), str(e.value)
  # No weights at all.
  os.remove(d / dunet.WEIGHTS_NAME)
  with pytest.raises(ConversionError, match="has no diffusion_pytorch_model"):
    dunet.read_model_dir(str(d))
  # Broken JSON.
  (d / "config.json").write_text("{not json")
  with pytest.raises(ConversionError, match="is not valid JSON"):
    dunet.read_model_dir(str(d))


def test_nonfinite_weights_are_refused_by_name(torch, tmp_path):
  # A NaN would give black images and exit 0: refused before any sampling.
  from safetensors.numpy import load_file, save_file
  d, _ = small_model_dir(torch, tmp_path)
  state = load_file(str(d / dunet.WEIGHTS_NAME))
  state["conv_in.weight"][0, 0, 1, 1] = np.nan
  state["mid_block.attentions.0.to_q.bias"][3] = np.inf
  save_file(state, str(d / dunet.WEIGHTS_NAME))
  with pytest.raises(ConversionError) as e:
    dunet.read_model_dir(str(d))
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(str(d / dunet.WEIGHTS_NAME))
  assert ("conv_in.weight, mid_block.attentions.0.to_q.bias hold NaN or "
          "infinite values") in msg, msg


def test_a_config_with_more_layers_than_the_weights_is_refused_at_once(
    torch, tmp_path):
  # layers_per_block=1000000 used to hang listing the expected tensors.
  d, _ = small_model_dir(torch, tmp_path)
  cfg = json.loads((d / "config.json").read_text())
  cfg["layers_per_block"] = 1000000
  (d / "config.json").write_text(json.dumps(cfg))
  start = time.time()
  with pytest.raises(ConversionError) as e:
    dunet.read_model_dir(str(d))
  assert time.time() - start < 10
  msg = str(e.value)
  assert "\n" not in msg and "layers_per_block=1000000" in msg, msg
  assert "the config does not describe these weights" in msg, msg


def test_pickled_bin_is_read_only_with_weights_only(torch, tmp_path,
                                                    monkeypatch):
  d, unet = small_model_dir(torch, tmp_path)
  os.remove(d / dunet.WEIGHTS_NAME)
  torch.save(unet.state_dict(), str(d / dunet.PICKLE_WEIGHTS_NAME))
  _, _, _, params = dunet.read_model_dir(str(d))  # plain tensors: allowed
  assert "conv_in" in params

  # A pickle that runs code when unpickled is refused, and does not run.
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (open, (str(marker), "w"))

  torch.save({"conv_in.weight": Evil()}, str(d / dunet.PICKLE_WEIGHTS_NAME))
  with pytest.raises(ConversionError, match="weights_only=True") as e:
    dunet.read_model_dir(str(d))
  assert not marker.exists()
  # One line of ours: torch's own text suggests weights_only=False.
  msg = str(e.value)
  assert "\n" not in msg and "weights_only=False" not in msg, msg
  assert "is not a plain tensor file" in msg, msg

  # Without torch, the pickle is not opened at all.
  monkeypatch.setitem(__import__("sys").modules, "torch", None)
  with pytest.raises(ConversionError, match="does not unpickle"):
    dunet.read_model_dir(str(d))


def test_export_refuses_a_non_empty_directory(tmp_path):
  model_cfg, size, ch = dunet.model_config_from_diffusers(MULTIHEAD_CONFIG)
  params = random_params(model_cfg, size, ch, seed=9)
  out = tmp_path / "taken"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  with pytest.raises(ConversionError, match="already exists"):
    dunet.write_model_dir(str(out), params, model_cfg, size, ch)
  assert os.listdir(out) == ["keep.txt"]
  assert [p for p in os.listdir(tmp_path) if p.startswith(".ddpm")] == []


def test_scheduler_export_names_the_prediction_and_learned_variance():
  from configs import digits
  config = digits.get_config()
  for ours, theirs in (("eps", "epsilon"), ("x0", "sample"),
                       ("v", "v_prediction")):
    config.diffusion.prediction = ours
    assert dsched.scheduler_config_from_settings(config)[
        "prediction_type"] == theirs
  config.diffusion.learned_variance = "learned_range"
  assert dsched.scheduler_config_from_settings(config)[
      "variance_type"] == "learned_range"
  config.diffusion.learned_variance = "learned"
  with pytest.raises(ConversionError, match="log-variance"):
    dsched.scheduler_config_from_settings(config)
  config.diffusion.learned_variance = ""
  config.diffusion.prediction = "xprev"
  with pytest.raises(ConversionError, match="prediction_type"):
    dsched.scheduler_config_from_settings(config)
