"""The offline default: scikit-learn's 8x8 handwritten digits on 2 CPU cores.

Needs no network. Trains to recognisable digits in a few minutes on a
2-core CPU machine (see README).
"""

from configs import default


def get_config():
  """A small paper-architecture U-Net on 8x8 grayscale digits."""
  config = default.get_default_config()
  config.data.name = "digits"
  config.data.image_size = 8
  config.data.channels = 1
  config.data.random_flip = False  # a mirrored digit is not a digit

  config.model.ch = 32
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = (4,)
  config.model.dropout = 0.1
  # 8 GroupNorm groups, not the paper's 32: at ch 32 that would be one
  # channel per group on the first level, where GroupNorm then removes the
  # timestep embedding added to it. 8 scored better on every training
  # seed, on bits/dim and the digits FID (docs/benchmarks.md, "Training
  # outcome").
  config.model.num_groups = 8

  config.sampling.variance = "fixedlarge"
  config.sampling.num_samples = 49
  config.sampling.batch_size = 49

  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 200

  config.training.batch_size = 64
  config.training.num_steps = 1500
  config.training.ema_decay = 0.995  # short run: a long EMA would keep the init
  config.training.log_every = 50
  config.training.checkpoint_every = 500
  config.training.sample_every = 0
  return config
