"""The noise-aware digits classifier for classifier guidance
(train_classifier.py): the U-Net's downsampling half with a pooled head,
trained on x_t at uniform t with the digits diffusion schedule."""

import ml_collections

from configs import digits


def get_config():
  """Digits data and schedule (as configs/digits.py), a small classifier."""
  config = digits.get_config()
  config.classifier = ml_collections.ConfigDict()
  config.classifier.num_classes = 10
  config.classifier.ch = 32
  config.classifier.ch_mult = (1, 2)
  config.classifier.num_res_blocks = 1
  config.classifier.attn_resolutions = ()
  config.classifier.dropout = 0.0
  config.classifier.num_groups = 32
  config.optim.learning_rate = 1e-3
  config.training.batch_size = 64
  config.training.num_steps = 1000
  config.training.log_every = 100
  return config
