"""The paper's 256x256 model on LSUN Cat (about 114M parameters)."""

from configs import celebahq256


def get_config():
  """LSUN Cat 256 (Ho et al. 2020, Appendix B): the CelebA-HQ model and
  optimiser settings, trained for 1,800,000 steps."""
  config = celebahq256.get_config()
  config.data.name = "lsun/cat"
  config.training.num_steps = 1_800_000
  return config
