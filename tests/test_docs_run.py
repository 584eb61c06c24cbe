"""Every train.py, train_classifier.py, exporter, sample.py and evaluate.py
command that README.md and docs/ show is run as written, in a fresh
directory (the repository's configs/ beside it), with tiny sizes added
after it: a 1-level U-Net, 2 training steps, 2 to 4 samples. The paper's
T = 1000 is kept, so the documented --steps and --t values stay valid.

The documented commands this test does not run are listed in NOT_RUN with
where they are tested instead; a new documented command is neither run nor
listed fails test_every_documented_command_is_run_or_listed."""

import json
import os
import pathlib
import shlex
import shutil

import numpy as np
import pytest

from tests import test_docs_commands as docs
from tests.processes import error_line, run_entries_in_one_process

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Added after each documented command: the smallest settings that still run
# the whole path (placed last, they take precedence over the command's).
TINY_TRAINING = [
    "--config.model.ch=32", "--config.model.num_res_blocks=1",
    "--config.model.ch_mult=(1,)", "--config.model.attn_resolutions=(8,)",
    "--config.training.num_steps=2", "--config.training.batch_size=8",
    "--config.training.log_every=1", "--config.optim.warmup_steps=1",
    "--config.sampling.num_samples=2", "--config.sampling.batch_size=2"]
TINY_CLASSIFIER = ["--config.classifier.ch_mult=(1,)",
                   "--config.training.num_steps=2",
                   "--config.training.batch_size=8",
                   "--config.training.log_every=1"]
TINY = {"train.py": TINY_TRAINING, "train_classifier.py": TINY_CLASSIFIER,
        "ddpm_jax.interop.export": [],
        "sample.py": ["--num", "2", "--batch_size", "2"],
        "evaluate.py": ["--num", "4", "--batch_size", "4"]}
# In the order they depend on each other: the trained workdirs first, then
# the export whose folder stands in for the downloaded diffusers model.
ORDER = ("train.py", "train_classifier.py", "ddpm_jax.interop.export",
         "sample.py", "evaluate.py")
# The documented diffusers model (google/ddpm-cifar10-32, a Hub repo id)
# is not available offline: the digits workdir's export stands in for it,
# as a local folder of that name (which wins over the repo id; the Hub
# path itself is tested in tests/test_hub.py).
DOWNLOADED_MODEL = "google/ddpm-cifar10-32"

# Documented commands of these entry points that this test does not run:
# (start of the command line, why, and where it is tested instead).
NOT_RUN = [
    ("python train.py --config configs/cifar10.py --workdir gs://",
     "a 2-host pod job on a bucket: test_bucket.py runs this line as written "
     "(test_the_documented_pod_command_preempted_and_resumed_in_the_"
     "bucket)"),
    ("python evaluate.py --workdir gs://bucket/cifar10 --metric fid "
     "--multihost",
     "FID-50k on a pod: needs the Inception weights and a pod; "
     "test_multihost.py runs evaluate.py --multihost (digits, bits/dim) and "
     "the FID statistics over 2 processes, test_inception.py FID itself"),
    ("python evaluate.py --model google/ddpm-cifar10-32 --dataset cifar10 "
     "--metric fid --multihost",
     "as the line above; test_hub.py fetches a model by its Hub name"),
]
# --metric fid needs the FID Inception's weights, a one-time download: run
# offline, the documented command gives the one-line error saying where to
# get them, and nothing else.
NEEDS_DOWNLOAD = {("evaluate.py", "--workdir workdir/digits --metric fid")}


def _documented():
  """{entry point: [argv, ...]} of the documented commands of ORDER's entry
  points, placeholders filled in, less NOT_RUN."""
  out = {entry: [] for entry in ORDER}
  for _, line in docs.COMMANDS:
    words = shlex.split(line)
    if words[0] not in ("python", "python3") or any(
        line.startswith(prefix) for prefix, _ in NOT_RUN):
      continue
    parsed = docs._entry_and_argv(words)  # pylint: disable=protected-access
    if parsed is not None and parsed[0] in out:
      argv = docs._argv(parsed[1])  # pylint: disable=protected-access
      if argv not in out[parsed[0]]:
        out[parsed[0]].append(argv)
  return out


def _wrote(stdout):
  """The paths a command's 'wrote A.png, A.npz and A.json' / 'wrote A.*' /
  'wrote DIR (step ...' line names."""
  line = [l for l in stdout.splitlines() if l.startswith("wrote ")][-1]
  words = line[len("wrote "):].replace(",", " ").split()
  return [w for w in words if "/" in w]


def test_every_documented_command_is_run_or_listed():
  documented = _documented()
  for entry in ORDER:
    assert documented[entry], f"no documented {entry} command"
  listed = [p for p, _ in NOT_RUN]
  for prefix in listed:
    assert any(line.startswith(prefix) for _, line in docs.COMMANDS), (
        f"NOT_RUN lists {prefix!r}, which no document shows any more")


@pytest.mark.slow
def test_documented_commands_run_as_written(tmp_path):
  (tmp_path / "configs").symlink_to(ROOT / "configs")
  documented = _documented()
  results = {}
  # Two processes: the training and the export, then (once the export
  # stands in for the downloaded model) the sampling and evaluation.
  for entries in (ORDER[:3], ORDER[3:]):
    if "sample.py" in entries:
      # The exporter's documented default output is the stand-in for the
      # downloaded diffusers model.
      (tmp_path / DOWNLOADED_MODEL).parent.mkdir()
      shutil.copytree(tmp_path / "workdir" / "digits" / "diffusers_step2",
                      tmp_path / DOWNLOADED_MODEL)
    groups = [(entry, [argv + TINY[entry] for argv in documented[entry]])
              for entry in entries]
    # At XLA's default level: the 1000-step samplers run longer than
    # they compile (cold, alone: 88 s against 106 s at the suite's level).
    for (entry, _), rs in zip(groups, run_entries_in_one_process(
        groups, tmp_path, default_level=True)):
      for r in rs:
        results[(entry,
                 " ".join(r.argv[:len(r.argv) - len(TINY[entry])]))] = r
  failed = []
  for (entry, line), r in results.items():
    if (entry, line) in NEEDS_DOWNLOAD:
      last = error_line(r)
      assert r.returncode == 1 and "download https://" in last, (
          line, r.stderr[-2000:])
      continue
    if r.returncode != 0:
      failed.append(f"python {entry} {line}: rc {r.returncode}: "
                    f"{r.stderr[-1500:]}")
  assert not failed, "\n\n".join(failed)

  # What the commands made, where the docs say.
  for workdir in ("workdir/digits", "workdir/cond"):
    assert sorted(os.listdir(tmp_path / workdir / "checkpoints")) == ["2"]
    assert (tmp_path / workdir / "samples" / "step_00000002.png").is_file()
  assert (tmp_path / "workdir" / "clf" / "classifier_params").is_dir()
  for (entry, line), r in results.items():
    if entry != "sample.py":
      continue
    paths = _wrote(r.stdout)
    assert paths, (line, r.stdout)
    for path in paths:
      if path.endswith(".*"):
        assert list((tmp_path / os.path.dirname(path)).glob(
            os.path.basename(path))), (line, path)
      else:
        assert (tmp_path / path).is_file(), (line, path)
    if line.startswith("--model"):
      assert paths[0].startswith(DOWNLOADED_MODEL + "/samples/"), paths
    else:
      assert paths[0].startswith("workdir/"), paths
    if paths[0].endswith(".png") and "--interpolate" not in line:
      images = np.load(tmp_path / paths[1])
      key = "images" if "images" in images else "samples"
      assert images[key].shape[-3:] == (8, 8, 1), (line, images[key].shape)
  # docs/sampling.md names the third command's output (at step 1500 there).
  line = ("--workdir workdir/digits --sampler ddim --steps 50 --eta 1.0 "
          "--spacing trailing")
  assert _wrote(results[("sample.py", line)].stdout)[0] == (
      "workdir/digits/samples/sample_seed0_step2_ddim50_trailing_eta1.png")
  assert "writes `sample_seed0_step1500_ddim50_trailing_eta1`" in " ".join(
      (ROOT / "docs" / "sampling.md").read_text().split())
  # Nothing was written beside the workdirs (docs/configs.md's is "w") and
  # the stand-in model.
  assert sorted(os.listdir(tmp_path)) == ["configs", "google", "w",
                                          "workdir"]
  for (entry, line), r in results.items():
    if entry == "evaluate.py" and (entry, line) not in NEEDS_DOWNLOAD:
      value = json.loads(r.stdout.strip().splitlines()[-1])
      assert value, line
