"""The paper's 256x256 model on LSUN Church (about 114M parameters)."""

from configs import celebahq256


def get_config():
  """LSUN Church 256 (Ho et al. 2020, Appendix B): the CelebA-HQ model and
  optimiser settings, trained for 1,200,000 steps."""
  config = celebahq256.get_config()
  config.data.name = "lsun/church_outdoor"
  config.training.num_steps = 1_200_000
  return config
