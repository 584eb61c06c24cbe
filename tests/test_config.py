"""validate_config: every bad field is named with the fix."""

import pytest

from configs import (celebahq256, cifar10, digits, lsun_bedroom256,
                     lsun_cat256, lsun_church256)
from ddpm_jax.from_config import ConfigError
from ddpm_jax.validation import validate_config


def test_shipped_configs_are_valid():
  for module in (digits, cifar10, celebahq256, lsun_church256,
                 lsun_bedroom256, lsun_cat256):
    validate_config(module.get_config())


# Appendix B of Ho et al. 2020: (dataset, size, batch, lr, dropout, steps,
# random flips).
PAPER_RUNS = {
    cifar10: ("cifar10", 32, 128, 2e-4, 0.1, 800_000, True),
    celebahq256: ("celeb_a_hq/256", 256, 64, 2e-5, 0.0, 500_000, True),
    lsun_church256: ("lsun/church_outdoor", 256, 64, 2e-5, 0.0, 1_200_000,
                     True),
    lsun_bedroom256: ("lsun/bedroom", 256, 64, 2e-5, 0.0, 2_400_000, False),
    lsun_cat256: ("lsun/cat", 256, 64, 2e-5, 0.0, 1_800_000, True),
}


@pytest.mark.parametrize("module", list(PAPER_RUNS),
                         ids=lambda m: m.__name__.split(".")[-1])
def test_configs_are_the_papers_runs(module):
  c = module.get_config()
  got = (c.data.name, c.data.image_size, c.training.batch_size,
         c.optim.learning_rate, c.model.dropout, c.training.num_steps,
         c.data.random_flip)
  assert got == PAPER_RUNS[module]
  assert c.training.ema_decay == 0.9999 and c.optim.warmup_steps == 5000
  assert c.diffusion.num_timesteps == 1000


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
    ("dropout_rng_impl", "philox4x32", "model.dropout_rng_impl='philox4x32'"),
    ("attention_impl", "flash", "model.attention_impl='flash'"),
])
def test_bad_model_fields(field, value, match):
  config = digits.get_config()
  config.model[field] = value
  with pytest.raises(ConfigError, match=match):
    validate_config(config)


def test_table2_rows_are_valid_configs():
  from configs import cifar10_table2
  for row, (prediction, learned, loss) in cifar10_table2.ROWS.items():
    c = cifar10_table2.get_config(row)
    validate_config(c)
    assert (c.diffusion.prediction, c.diffusion.learned_variance,
            c.training.loss) == (prediction, learned, loss)
  assert cifar10_table2.get_config().training.loss == "mse"
  with pytest.raises(ValueError, match="Table 2 row"):
    cifar10_table2.get_config("eps_hybrid")


def test_entry_points_turn_on_the_persistent_compilation_cache(
    tmp_path, monkeypatch):
  import jax
  from ddpm_jax import cli
  before = jax.config.jax_compilation_cache_dir
  try:
    cli.enable_compilation_cache()  # $JAX_COMPILATION_CACHE_DIR (tests) wins
    assert jax.config.jax_compilation_cache_dir == before
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("DDPM_JAX_CACHE", str(tmp_path))
    cli.enable_compilation_cache()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax")
  finally:
    jax.config.update("jax_compilation_cache_dir", before)


def test_saved_config_is_merged_onto_the_defaults(tmp_path):
  import json
  from ddpm_jax import checkpoints
  from configs import digits
  config = digits.get_config()
  config.model.attn_head_dim = 16
  config.diffusion.betas = (0.1, 0.2)
  checkpoints.write_config(str(tmp_path), config)
  # Written by today's code: read back field for field.
  back = checkpoints.read_config(str(tmp_path))
  assert back.to_dict() == config.to_dict()
  assert isinstance(back.model.ch_mult, tuple)
  # An older config.json without some fields (and a section of its own).
  path = tmp_path / checkpoints.CONFIG_FILE
  saved = json.loads(path.read_text())
  del saved["training"]["label_dropout"], saved["model"]["upsample_conv"]
  del saved["parallel"]
  saved["classifier"] = {"num_classes": 10}
  path.write_text(json.dumps(saved))
  old = checkpoints.read_config(str(tmp_path))
  assert old.training.label_dropout == 0.1  # configs/default.py's
  assert old.model.upsample_conv == "subpixel" and not old.parallel.fsdp
  assert old.classifier.num_classes == 10 and old.model.ch == 32
  saved["training"]["num_steps"] = "many"
  path.write_text(json.dumps(saved))
  with pytest.raises(checkpoints.SavedConfigError, match="training.num_steps"):
    checkpoints.read_config(str(tmp_path))


def test_the_tests_shared_config_is_the_same_in_and_out_of_process(
    monkeypatch):
  # tests/tiny_configs.py: TINY_ARGS on a command line gives tiny_config(),
  # so that train.py runs compile the in-process tests' programs.
  import pathlib
  import sys
  from absl import flags
  from ml_collections import config_flags
  from tests.tiny_configs import TINY_ARGS, tiny_config
  monkeypatch.chdir(pathlib.Path(__file__).resolve().parent.parent)
  argv = ["train.py"] + TINY_ARGS
  monkeypatch.setattr(sys, "argv", argv)
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values)
  values(argv)
  want = tiny_config(log_every=1, checkpoint_every=2)
  assert values.config.to_dict() == want.to_dict()
