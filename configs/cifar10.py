"""The paper's CIFAR-10 run: 35.7M-parameter U-Net, batch 128, 800k steps."""

from configs import default


def get_config():
  """CIFAR-10 32x32 (Ho et al. 2020, Sec. 4 and Appendix B)."""
  return default.get_default_config()
