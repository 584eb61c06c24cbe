"""Command-line flags that sample.py and evaluate.py share: where the model
comes from, and the sampler settings that override its config."""

from __future__ import annotations

from typing import Any, Dict

from absl import flags

from ddpm_jax import cli
from ddpm_jax.choices import FIXED_VARIANCES, SPACINGS
from ddpm_jax.interop import repo_ids

FLAGS = flags.FLAGS

# Flag -> the config.sampling field it sets.
_SAMPLING_FIELDS = {"sampler": "sampler", "steps": "steps", "eta": "eta",
                    "spacing": "spacing",
                    "set_alpha_to_one": "set_alpha_to_one",
                    "rederive_eps": "rederive_eps", "class": "label",
                    "guidance": "guidance", "classifier": "classifier"}


def define_source_flags() -> None:
  """--workdir, --model, --revision, --image_size, --ema, --dtype and
  --memory_check."""
  flags.DEFINE_string("workdir", None, "A train.py workdir.")
  flags.DEFINE_string("model", None, "A diffusers model directory, a "
                      "Hugging Face Hub repo id (google/ddpm-cifar10-32; a "
                      "local path of that name wins) or an original TF "
                      "checkpoint prefix (model.ckpt-NNNN), instead of "
                      "--workdir.")
  flags.DEFINE_string("revision", None, "--model as a Hub repo id: the "
                      "branch, tag or commit (default: main).")
  flags.DEFINE_integer("image_size", None, "--model TF checkpoints: the "
                       "image size (32 for CIFAR-10, 256 for CelebA-HQ / "
                       "LSUN).")
  flags.DEFINE_bool("ema", True, "Use the EMA parameters (--noema: the raw "
                    "ones).")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "The U-Net's "
                    "compute dtype (default: the model's: a workdir's "
                    "model.dtype, float32 for --model). Parameters and the "
                    "sampler's chain stay float32.")
  flags.DEFINE_bool("memory_check", True, "Refuse a --batch_size whose "
                    "activations need more than a device's memory (a lower "
                    "bound, checked before any batch is made); "
                    "--nomemory_check tries anyway.")


def define_sampler_flags() -> None:
  """The sampler settings, each overriding a ``config.sampling`` field."""
  flags.DEFINE_enum("sampler", None, ["ddpm", "ddim"], "Sampler (default: "
                    "the config's sampling.sampler, ddpm).")
  flags.DEFINE_integer("steps", None, "Reverse steps (default: the "
                       "config's; 0 = all T). Fewer than T: ddim, or ddpm "
                       "respaced.")
  flags.DEFINE_float("eta", None, "DDIM eta (0: deterministic).")
  flags.DEFINE_bool("set_alpha_to_one", None, "DDIM: the last step goes to "
                    "abar = 1 (default), or with --noset_alpha_to_one to "
                    "abar of timestep 0.")
  flags.DEFINE_bool("rederive_eps", None, "DDIM: the direction term uses "
                    "the eps of the clipped x_0 (diffusers' "
                    "use_clipped_model_output).")
  flags.DEFINE_enum("spacing", None, list(SPACINGS),
                    "Which timesteps a reduced-step sampler visits.")
  flags.DEFINE_string("variance", None, f"Override the sampler variance: "
                      f"one of {', '.join(FIXED_VARIANCES)}.")
  flags.DEFINE_integer("class", None, "Class-conditional models: the class "
                       "of every sample (default: sample j gets class j mod "
                       "the class count).")
  flags.DEFINE_float("guidance", None, "Class-conditional models: "
                     "classifier-free guidance scale w, eps = (1 + w) eps_c "
                     "- w eps_null (diffusers' guidance_scale is 1 + w).")
  flags.DEFINE_string("classifier", None, "A train_classifier.py workdir: "
                      "guide an unconditional model with its noise-aware "
                      "classifier at scale --guidance.")


def check_one_source() -> None:
  """Exits with a one-line error unless exactly one of --workdir and
  --model is given."""
  if (FLAGS.workdir is None) == (FLAGS.model is None):
    cli.fail("give exactly one of --workdir (a train.py run) and --model (a "
             "diffusers model directory, Hub repo id or TF checkpoint)")
  if FLAGS.revision is not None and (FLAGS.model is None or
                                     not repo_ids.is_repo_id(FLAGS.model)):
    cli.fail("--revision goes with --model given as a Hub repo id "
             "(org/name)")


def sampler_overrides() -> Dict[str, Any]:
  """The ``config.sampling`` fields the given sampler flags set."""
  return {field: FLAGS[name].value
          for name, field in _SAMPLING_FIELDS.items()
          if FLAGS[name].value is not None}


# The config field -> the flag that sets it, for errors that name the flag
# (:func:`ddpm_jax.validation.validate_config`).
FLAG_NAMES = {f"sampling.{field}": f"--{name}"
              for name, field in _SAMPLING_FIELDS.items()}
