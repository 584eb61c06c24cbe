"""Shared defaults: every experiment config starts from these."""

from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict


def get_default_config() -> ml_collections.ConfigDict:
  """The paper's CIFAR-10 hyperparameters; experiments override fields."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "cifar10"  # 'digits', 'folder' or a tfds dataset name
  config.data.split = "train"
  config.data.image_size = 32
  config.data.channels = 3
  config.data.random_flip = True
  config.data.data_dir = ""  # tfds data_dir; '' = tfds default
  # tfds: download and prepare a dataset missing from data_dir (needs the
  # network; on a multi-host job prepare it beforehand and set False).
  config.data.download = True
  config.data.shuffle_buffer = 10_000  # tfds: examples in the shuffle buffer
  config.data.folder = ""  # with name='folder': a directory of image files
  config.data.eval_split = "test"  # held out, for bits/dim evaluation

  config.model = ml_collections.ConfigDict()
  config.model.ch = 128
  config.model.ch_mult = (1, 2, 2, 2)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.1
  config.model.resamp_with_conv = True
  config.model.num_groups = 32
  config.model.norm_eps = 1e-6
  # Options of the same U-Net family (diffusers UNet2DModel options); these
  # values are the paper's. attn_head_dim None: one head as wide as the
  # block. downsample_padding 0: TF 'SAME' (0 before, 1 after); 1: 1 each
  # side. act: of the residual blocks, swish/silu, mish, gelu or relu.
  config.model.attn_head_dim = config_dict.placeholder(int)
  config.model.flip_sin_to_cos = False
  config.model.freq_shift = 1.0
  config.model.downsample_padding = 0
  config.model.act = "swish"
  config.model.dtype = "float32"
  # How the stride-1 convolutions are differentiated (ddpm_jax/models/
  # conv.py): 'auto' = XLA's own gradient ('xla', the fastest measured on
  # CPU, GPU and TPU) or 'matmul' (patches^T dy). Same parameters and output.
  config.model.conv_backward = "auto"
  # The generator of the dropout masks (ddpm_jax/models/unet.py Dropout):
  # 'threefry4x32' (Threefry-4x32-20, fused by XLA: 4x cheaper on the CPU)
  # or 'threefry2x32' (nn.Dropout's own masks, JAX's default generator).
  config.model.dropout_rng_impl = "threefry4x32"
  # How upsample-then-conv3x3 is computed (ddpm_jax/models/conv.py):
  # 'subpixel' = one 2x2 convolution per output phase at the low
  # resolution (2.25x fewer FLOPs), 'repeat' = convolve the repeated image.
  # Same parameters; the outputs agree to float32 rounding.
  config.model.upsample_conv = "subpixel"
  # How attention is computed (ddpm_jax/models/unet.py attend): 'matmul'
  # (two batched products), 'xla' or 'cudnn' (jax.nn.dot_product_attention
  # with that implementation; 'cudnn' is cuDNN's fused attention, GPU only,
  # where model.dtype float32 computes as 'matmul'). Same parameters.
  config.model.attention_impl = "matmul"
  # Self-conditioning: the U-Net also sees its own x_0 estimate (2C input
  # channels); see ddpm_jax/self_conditioning.py.
  config.model.self_condition = False
  # Class-conditional U-Net: > 0 adds a label embedding (plus a null class
  # for classifier-free guidance); the data must have labels.
  config.model.num_classes = 0

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.schedule = "linear"  # see ddpm_jax.schedules
  config.diffusion.num_timesteps = 1000
  config.diffusion.beta_start = 1e-4
  config.diffusion.beta_end = 0.02
  # schedule 'custom': the T betas themselves (e.g. a diffusers scheduler's
  # trained_betas).
  config.diffusion.betas = config_dict.placeholder(tuple)
  # What the U-Net predicts: 'eps' (the paper), 'x0', 'xprev' (the
  # posterior mean, Table 2's mu~) or 'v'.
  config.diffusion.prediction = "eps"
  # '' : the reverse variance is fixed (sampling.variance); 'learned': the
  # U-Net outputs the log-variance too (2C channels, the original code);
  # 'learned_range': improved DDPM's interpolation. Learned ones need
  # training.loss 'kl' or 'hybrid'.
  config.diffusion.learned_variance = ""

  config.sampling = ml_collections.ConfigDict()
  # 'ddpm' (ancestral, Algorithm 2) or 'ddim'; see ddpm_jax/samplers/registry.py.
  config.sampling.sampler = "ddpm"
  # Steps of the reverse chain: 0 = all T. Fewer: 'ddim', or 'ddpm' with
  # the betas respaced (improved DDPM); spacing picks the timesteps:
  # leading, trailing, linspace (diffusers) or uniform, quadratic (DDIM).
  config.sampling.steps = 0
  config.sampling.spacing = "uniform"
  config.sampling.eta = 0.0  # DDIM: 0 deterministic, 1 DDPM-like noise
  # DDIM: the last step goes to abar = 1 (diffusers' set_alpha_to_one), or
  # to abar of timestep 0; rederive_eps re-derives eps from the clipped x_0
  # for the direction term (diffusers' use_clipped_model_output).
  config.sampling.set_alpha_to_one = True
  config.sampling.rederive_eps = False
  # Class-conditional models: the class of every sample (-1: sample j gets
  # class j mod num_classes) and the classifier-free guidance scale w
  # (eps = (1 + w) eps_c - w eps_null; 0: no guidance).
  config.sampling.label = -1
  config.sampling.guidance = 0.0
  # Classifier guidance of an unconditional model: a train_classifier.py
  # workdir (its noise-aware classifier); sampling.guidance is the scale s.
  config.sampling.classifier = ""
  config.sampling.variance = "fixedlarge"  # or 'fixedsmall'
  config.sampling.mean_from = "x0"  # or 'eps' (eq. 11)
  config.sampling.clip_denoised = True
  config.sampling.num_samples = 64  # grid drawn at each sample_every
  config.sampling.batch_size = 64

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 2e-4
  config.optim.warmup_steps = 5000
  config.optim.grad_clip = 1.0
  config.optim.beta1 = 0.9
  config.optim.beta2 = 0.999
  config.optim.eps = 1e-8

  # Devices: the batch is split over all of them; fsdp also splits the
  # parameters and optimizer state (for the 114M+ models).
  config.parallel = ml_collections.ConfigDict()
  config.parallel.fsdp = False

  # The noise-aware classifier that train_classifier.py trains for
  # classifier guidance (configs/digits_classifier.py): the U-Net's
  # downsampling half and a pooled linear head (ddpm_jax/models/classifier.py).
  config.classifier = ml_collections.ConfigDict()
  config.classifier.num_classes = 10
  config.classifier.ch = 32
  config.classifier.ch_mult = (1, 2)
  config.classifier.num_res_blocks = 1
  config.classifier.attn_resolutions = ()
  config.classifier.dropout = 0.0
  config.classifier.num_groups = 32

  config.training = ml_collections.ConfigDict()
  config.training.batch_size = 128
  config.training.num_steps = 800_000
  config.training.ema_decay = 0.9999
  # Examples per forward/backward pass on each device, the gradient summed
  # over the passes: -1 auto (CPU devices: a few at a time, which keeps
  # the activations in cache, 1.7x faster on the tiny32 step; GPU/TPU: all
  # at once), 0 all at once, n > 0 n at a time (one device, or CPU devices
  # without fsdp). Same gradient up to float32 summation order.
  config.training.microbatch_size = -1
  config.training.log_every = 100
  config.training.checkpoint_every = 10_000
  config.training.sample_every = 50_000  # 0: only at the end
  config.training.max_to_keep = 3
  # The longest a checkpoint save, or another write to the workdir, may
  # take: one still unfinished after this many seconds (a bucket that
  # stopped answering, which the storage clients retry for many minutes)
  # ends the run with one line; 0: no limit.
  config.training.storage_timeout_s = 600.0
  # A non-finite loss or gradient stops the run (False) or skips the update.
  config.training.skip_nonfinite = False
  # Train steps per jitted call (a lax.fori_loop over that many batches):
  # above 1 for small models whose step is shorter than the cost of
  # launching it. Logs, checkpoints, evaluations and SIGTERM still happen
  # at their own steps (a call stops short of them).
  config.training.steps_per_call = 1
  # The peak TFLOP/s of one device that the log's MFU is measured against;
  # 0: the table of TPU and GPU kinds in ddpm_jax/run/hardware_use.py (no
  # MFU where the kind is not listed, e.g. on the CPU).
  config.training.peak_tflops = 0.0
  # 'START:END': a jax.profiler trace of steps START to END (as the log
  # numbers them) on process 0, in WORKDIR/profile/ (TensorBoard's profile
  # plugin reads it); '': none.
  config.training.profile_steps = ""
  # The objective: 'mse' (L_simple for eps), 'kl' (the bound's terms, in
  # bits) or 'hybrid' (mse + hybrid_lambda * the bound, the mean's gradient
  # stopped in it; improved DDPM). loss_weighting of the mse: 'none',
  # 'eps_equivalent', 'min_snr' (min_snr_gamma) or 'p2' (p2_gamma, p2_k).
  # Bits/dim of the EMA model on data.eval_split every eval_every steps (0:
  # never), over eval_examples images (0: the whole split).
  config.training.eval_every = 0
  config.training.eval_examples = 0
  config.training.eval_batch_size = 64
  # Sample quality of the EMA model every quality_every steps (0: never):
  # quality_metric 'digits' (the offline digits score) or 'fid' (FID and
  # IS; needs the Inception weights, ddpm_jax/interop/inception_weights.py)
  # of quality_samples samples drawn with config.sampling.
  config.training.quality_every = 0
  config.training.quality_metric = "digits"
  config.training.quality_samples = 297
  config.training.loss = "mse"
  config.training.loss_weighting = "none"
  config.training.hybrid_lambda = 1e-3
  config.training.min_snr_gamma = 5.0
  config.training.p2_gamma = 1.0
  config.training.p2_k = 1.0
  # Class-conditional models: the probability that a training label is
  # replaced by the null class (classifier-free guidance needs > 0).
  config.training.label_dropout = 0.1
  return config


def with_defaults(saved: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A saved config (e.g. a workdir's config.json) merged onto
  :func:`get_default_config`: fields it lacks (written before they
  existed) take today's defaults; sections and fields it adds are kept."""
  config = get_default_config()
  _merge(config, saved, "")
  return config


def _merge(config: ml_collections.ConfigDict, saved: Mapping[str, Any],
           where: str) -> None:
  for key, value in saved.items():
    if (isinstance(value, Mapping) and key in config and
        isinstance(config[key], ml_collections.ConfigDict)):
      _merge(config[key], value, f"{where}{key}.")
      continue
    try:
      config[key] = (ml_collections.ConfigDict(value)
                     if isinstance(value, Mapping) else value)
    except TypeError as e:
      raise TypeError(f"config field {where}{key}={value!r} does not fit "
                      f"the default's type ({e})") from None
