"""The small digits-based configs the training tests run (CPU-sized)."""

from configs import digits


def tiny_digits_config(*, num_timesteps: int, batch_size: int,
                       num_samples: int = 4, **training):
  """The digits config with a one-block, 32-channel U-Net, ``num_timesteps``
  diffusion steps and a ``batch_size`` batch; ``training`` overrides
  further ``config.training`` fields."""
  config = digits.get_config()
  config.model.ch = 32
  config.model.num_res_blocks = 1
  config.diffusion.num_timesteps = num_timesteps
  config.training.batch_size = batch_size
  config.sampling.num_samples = num_samples
  config.sampling.batch_size = num_samples
  for key, value in training.items():
    config.training[key] = value
  return config
