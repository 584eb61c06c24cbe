"""The paper's 256x256 model on CelebA-HQ (about 114M parameters)."""

from configs import default


def get_config():
  """CelebA-HQ 256 (Ho et al. 2020, Appendix B): batch 64, lr 2e-5."""
  config = default.get_default_config()
  config.data.name = "celeb_a_hq/256"
  config.data.image_size = 256
  config.model.ch_mult = (1, 1, 2, 2, 4, 4)
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.0
  config.sampling.variance = "fixedsmall"
  config.sampling.num_samples = 16
  config.sampling.batch_size = 16
  config.optim.learning_rate = 2e-5
  config.training.batch_size = 64
  config.training.num_steps = 500_000
  config.training.checkpoint_every = 5_000
  config.training.sample_every = 25_000
  return config
