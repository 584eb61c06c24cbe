"""The small digits-based configs the tests run (CPU-sized).

Tests use :func:`tiny_config` (in a process) or :data:`TINY_ARGS` (on a
train.py command line), which are the same config, unless they test the
very setting they change: their train steps, samplers and evaluators are
then the same programs in every test and process, compiled once per run
and read back from the suite's compile cache (tests/conftest.py) after
that. tests/test_config.py checks that the two stay the same config."""

from configs import digits

# tiny_config() as train.py overrides (a 1-level U-Net with attention and
# 8 GroupNorm groups, T=20, batch 8, warmup 2, 4 samples at the end), plus
# log and checkpoint intervals for the tests that read them (they do not
# change a program).
TINY_ARGS = [
    "--config", "configs/digits.py", "--config.model.ch=32",
    "--config.model.num_res_blocks=1", "--config.model.ch_mult=(1,)",
    "--config.model.attn_resolutions=(8,)", "--config.model.num_groups=8",
    "--config.diffusion.num_timesteps=20", "--config.training.batch_size=8",
    "--config.training.log_every=1", "--config.training.checkpoint_every=2",
    "--config.sampling.num_samples=4", "--config.sampling.batch_size=4",
    "--config.optim.warmup_steps=2"
]


def tiny_digits_config(*, num_timesteps: int, batch_size: int,
                       num_samples: int = 4, one_level: bool = False,
                       **training):
  """The digits config (8 GroupNorm groups) with a one-block, 32-channel
  U-Net of two levels, or of one with attention if ``one_level`` (half the
  compile time), ``num_timesteps`` diffusion steps and a ``batch_size``
  batch; ``training`` overrides further ``config.training`` fields."""
  config = digits.get_config()
  config.model.ch = 32
  config.model.num_res_blocks = 1
  if one_level:
    config.model.ch_mult = (1,)
    config.model.attn_resolutions = (8,)
  config.diffusion.num_timesteps = num_timesteps
  config.training.batch_size = batch_size
  config.sampling.num_samples = num_samples
  config.sampling.batch_size = num_samples
  for key, value in training.items():
    config.training[key] = value
  return config


def tiny_config(**training):
  """The suite's shared config (:data:`TINY_ARGS`): a one-block, 32-channel
  U-Net of one level with attention and 8 groups, T=20, batch 8, warmup 2,
  4 samples; ``training`` overrides further ``config.training`` fields."""
  config = tiny_digits_config(num_timesteps=20, batch_size=8, one_level=True,
                              **training)
  config.optim.warmup_steps = 2
  return config
