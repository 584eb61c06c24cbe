"""Models by Hub repo id (ddpm_jax/interop/hub.py), against a local Hub
server (tests/hub_server.py): download into the cache, the cache alone
offline, --revision, a local folder of that name first, and one-line
errors for an unknown repo or revision, an empty cache offline and an
unreachable Hub."""

import os
import socket
import time

import numpy as np
import pytest

from tests import hub_server
from tests.processes import error_line, run_entries_in_one_process
from tests.tiny_configs import tiny_config


def _model_files(tmp_path, seed):
  """A tiny model's diffusers files (as export writes them), its params
  drawn from ``seed``: {name: bytes}."""
  from ddpm_jax import from_config
  from ddpm_jax.interop import diffusers_scheduler, diffusers_unet
  from ddpm_jax.train.state import create_train_state
  config = tiny_config()
  config.seed = seed
  params = create_train_state(config, from_config.make_model(config),
                              from_config.make_optimizer(config)).params
  # The output convolution starts at zero (eps = 0 whatever the rest):
  # drawn too, so that two seeds sample differently.
  kernel = params["conv_out"]["kernel"]
  params["conv_out"]["kernel"] = 0.1 * np.random.default_rng(seed).normal(
      size=kernel.shape).astype(np.float32)
  out = tmp_path / f"model{seed}"
  diffusers_unet.write_model_dir(
      str(out), params, config.model, config.data.image_size,
      config.data.channels,
      scheduler_config=diffusers_scheduler.scheduler_config_from_settings(
          config))
  return {p.name: p.read_bytes() for p in out.iterdir()}


def _closed_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_a_model_by_repo_id(tmp_path):
  first, second = _model_files(tmp_path, 0), _model_files(tmp_path, 1)
  repo = hub_server.Repo()
  repo.add(first)
  repo.add(second, names=("v2",))
  cache = str(tmp_path / "hf")
  work = tmp_path / "work"
  work.mkdir()
  sample = ["--num", "4", "--batch_size", "4"]

  def env(endpoint, **more):
    return dict(os.environ, HF_ENDPOINT=endpoint, HF_HOME=cache, **more)

  with hub_server.serve({"org/tiny": repo}) as url:
    [[fetched, pinned, no_repo, no_revision]] = run_entries_in_one_process(
        [("sample.py", [["--model", "org/tiny", *sample],
                        ["--model", "org/tiny", "--revision", "v2", *sample,
                         "--out", str(tmp_path / "v2")],
                        ["--model", "org/none", *sample],
                        ["--model", "org/tiny", "--revision", "nope",
                         *sample]])], cwd=work, env=env(url))
    assert repo.requests > 0
  for p in (fetched, pinned):
    assert p.returncode == 0, p.stderr[-3000:]
  # Into the Hub's cache; the samples under a local folder named after the
  # repo.
  assert os.path.isdir(os.path.join(cache, "hub", "models--org--tiny"))
  out = work / "org--tiny" / "samples" / "sample_seed0.npz"
  assert fetched.stdout.startswith("wrote org--tiny/samples/sample_seed0.png"
                                   ), fetched.stdout
  assert error_line(no_repo).startswith("error: no Hub repo org/none at ")
  assert error_line(no_revision) == (
      "error: --revision nope is not a branch, tag or commit of Hub repo "
      "org/tiny")

  # The server gone and HF_HUB_OFFLINE=1: the cache alone; a repo never
  # fetched is one line. A local folder named like the repo wins over it
  # (here the second model's files).
  local = tmp_path / "local"
  (local / "org" / "tiny").mkdir(parents=True)
  for name, data in second.items():
    (local / "org" / "tiny" / name).write_bytes(data)
  [[offline, not_cached]] = run_entries_in_one_process(
      [("sample.py", [["--model", "org/tiny", *sample, "--out",
                       str(tmp_path / "offline")],
                      ["--model", "org/other", *sample]])],
      cwd=work, env=env(url, HF_HUB_OFFLINE="1"))
  [[local_first]] = run_entries_in_one_process(
      [("sample.py", [["--model", "org/tiny", *sample, "--out",
                       str(tmp_path / "local_first")]])],
      cwd=local, env=env(f"http://127.0.0.1:{_closed_port()}"))
  for p in (offline, local_first):
    assert p.returncode == 0, p.stderr[-3000:]
  images = {name: np.load(tmp_path / f"{name}.npz")["images"]
            for name in ("v2", "offline", "local_first")}
  np.testing.assert_array_equal(images["offline"], np.load(out)["images"])
  # --revision v2 is the second model: the same images as its local copy,
  # not the first's.
  np.testing.assert_array_equal(images["v2"], images["local_first"])
  assert not np.array_equal(images["v2"], images["offline"])
  line = error_line(not_cached)
  assert line.startswith("error: Hub repo org/other is not in the Hugging "
                         "Face cache (") and "HF_HUB_OFFLINE is set" in line
  assert "hf download org/other --local-dir DIR" in line, line

  # A Hub that cannot be reached, nothing cached: one line, soon (the
  # endpoint is tried once first: huggingface_hub's own retries of a refused
  # connection alone take about 23 s; this run takes a few seconds).
  start = time.time()
  [[unreachable]] = run_entries_in_one_process(
      [("sample.py", [["--model", "org/tiny", *sample]])], cwd=work,
      env=dict(env(f"http://127.0.0.1:{_closed_port()}"),
               HF_HOME=str(tmp_path / "empty")))
  assert time.time() - start < 20
  line = error_line(unreachable)
  assert line.startswith("error: could not reach the Hugging Face Hub at "
                         "http://127.0.0.1:"), line
  assert "for org/tiny" in line and "--model DIR" in line, line
