"""validate_config: every bad field is named with the fix."""

import pytest

from configs import cifar10, digits
from ddpm_jax.training import ConfigError, validate_config


def test_shipped_configs_are_valid():
  validate_config(digits.get_config())
  validate_config(cifar10.get_config())


def test_custom_betas_are_a_valid_schedule():
  config = digits.get_config()
  config.diffusion.num_timesteps = 3
  config.diffusion.schedule = "custom"
  with pytest.raises(ConfigError, match="diffusion.schedule"):
    validate_config(config)  # 'custom' without betas
  config.diffusion.betas = [0.1, 0.2, 0.3]
  validate_config(config)


@pytest.mark.parametrize("field,value,match", [
    ("act", "tanh", "model.act='tanh'"),
    ("downsample_padding", 2, "model.downsample_padding=2"),
    ("attn_head_dim", 48, "model.attn_head_dim=48"),
])
def test_bad_model_fields(field, value, match):
  config = digits.get_config()
  config.model[field] = value
  with pytest.raises(ConfigError, match=match):
    validate_config(config)
