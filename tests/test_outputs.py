"""ddpm_jax.run.outputs: names from every setting that changes the
samples, and never over an existing output."""

import os

import pytest

from configs import digits
from ddpm_jax.run import outputs


def tag(**sampling):
  config = digits.get_config()  # T = 1000
  use_ema = sampling.pop("use_ema", True)
  config.model.dtype = sampling.pop("dtype", "float32")
  for k, v in sampling.items():
    config.sampling[k] = v
  return outputs.sampling_tag(config, use_ema)


def test_every_setting_that_changes_the_samples_is_named():
  assert tag() == ""
  assert tag(steps=1000) == ""  # all T steps: the default chain
  assert tag(steps=100) == "_ddpm100"
  assert tag(steps=100, spacing="trailing") == "_ddpm100_trailing"
  assert tag(sampler="ddim", steps=50, eta=0.5) == "_ddim50_eta0.5"
  assert tag(sampler="ddim", steps=50, set_alpha_to_one=False,
             rederive_eps=True) == "_ddim50_lastabar_rederive"
  assert tag(variance="fixedsmall") == "_fixedsmall"
  assert tag(mean_from="eps", clip_denoised=False) == "_meaneps_noclip"
  # Classifier-free guidance and classifier guidance at the same scale
  # are different samples, with different names.
  assert tag(label=3, guidance=2.0) == "_class3_w2"
  assert tag(guidance=2.0, classifier="clf") == "_clf2"
  assert tag(use_ema=False) == "_raw"
  assert tag(dtype="bfloat16") == "_bf16"
  assert tag(sampler="ddim", steps=50, dtype="bfloat16",
             use_ema=False) == "_ddim50_bf16_raw"
  names = [tag(), tag(steps=100), tag(steps=100, spacing="trailing"),
           tag(variance="fixedsmall"), tag(use_ema=False),
           tag(dtype="bfloat16"),
           tag(guidance=2.0, label=1), tag(guidance=2.0, classifier="c")]
  assert len(set(names)) == len(names)


def test_claim_never_returns_a_taken_name(tmp_path):
  prefix = str(tmp_path / "s")
  assert outputs.claim(prefix, outputs.SAMPLES, explicit=False) == prefix
  open(prefix + ".json", "w").close()  # any one of its files takes it
  assert outputs.claim(prefix, outputs.SAMPLES, False) == prefix + "_2"
  open(prefix + "_2.png", "w").close()
  assert outputs.claim(prefix, outputs.SAMPLES, False) == prefix + "_3"
  with pytest.raises(FileExistsError, match=r"s\.json exists: choose "
                     r"another --out"):
    outputs.claim(prefix, outputs.SAMPLES, explicit=True)
  assert sorted(os.listdir(tmp_path)) == ["s.json", "s_2.png"]
