"""The noise-aware digits classifier for classifier guidance
(train_classifier.py): the U-Net's downsampling half with a pooled head,
trained on x_t at uniform t with the digits diffusion schedule."""

from configs import digits


def get_config():
  """Digits data and schedule (as configs/digits.py), the default small
  classifier (configs/default.py's ``classifier`` section)."""
  config = digits.get_config()
  config.optim.learning_rate = 1e-3
  config.training.batch_size = 64
  config.training.num_steps = 1000
  config.training.log_every = 100
  return config
