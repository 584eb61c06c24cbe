"""The paper's 256x256 model on LSUN Bedroom (about 114M parameters)."""

from configs import celebahq256


def get_config():
  """LSUN Bedroom 256 (Ho et al. 2020, Appendix B): the CelebA-HQ model and
  optimiser settings, trained for 2,400,000 steps, without random flips
  (the one dataset the paper did not flip)."""
  config = celebahq256.get_config()
  config.data.name = "lsun/bedroom"
  config.training.num_steps = 2_400_000
  config.data.random_flip = False
  return config
