"""Kill test: train.py SIGKILLed at random moments and restarted with the
same command must end where an uninterrupted run ends.

  python tests/scripts/kill_resume.py --kills 20 [--steps 60] [--seed 0]
      [--workdir DIR or gs://bucket/prefix]
      [--steps_per_call K --checkpoint_every N]

Runs a tiny digits config twice: once straight through, once killed
``--kills`` times at random moments (each restart resumes from the latest
checkpoint) and then run to the end. Prints one JSON line with the largest
difference between the two final states; exits 1 if it exceeds 1e-6.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
STEPS = 60  # --steps
OPTIONS = []  # from --steps_per_call and --checkpoint_every
BASE_ARGS = [
    "--config", "configs/digits.py", "--config.model.ch=32",
    "--config.model.num_res_blocks=1", "--config.diffusion.num_timesteps=20",
    # One resolution level: the kills and restarts are what is tested. The
    # model, batch and samples of tests/tiny_configs.py's TINY_ARGS, whose
    # programs other tests compile too.
    "--config.model.ch_mult=(1,)", "--config.model.attn_resolutions=(8,)",
    "--config.model.num_groups=8",
    "--config.training.batch_size=8", "--config.training.max_to_keep=2",
    "--config.sampling.num_samples=4", "--config.sampling.batch_size=4",
    "--config.optim.warmup_steps=2",
]


def command(workdir):
  return [sys.executable, "train.py", *BASE_ARGS, *OPTIONS,
          f"--config.training.num_steps={STEPS}", "--workdir", workdir]


def env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def latest_step(workdir):
  from ddpm_jax import paths  # pylint: disable=g-import-not-at-top
  d = paths.join(workdir, "checkpoints")
  try:
    names = paths.listdir(d)
  except FileNotFoundError:
    # Not yet written; in a bucket also a folder whose only object (a
    # checkpoint being written) vanished between a check and the listing.
    return 0
  return max([int(n) for n in names if n.isdigit()] or [0])


def read_state(path):
  """A checkpoint's state item as host arrays, whatever mesh wrote it."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  checkpointer = ocp.StandardCheckpointer()
  meta = checkpointer.metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here), meta)
  return jax.device_get(checkpointer.restore(path, target))


def final_params(workdir):
  """The last checkpoint's state (params, EMA, ...), read with Orbax."""
  from ddpm_jax import paths  # pylint: disable=g-import-not-at-top
  return read_state(paths.join(workdir, "checkpoints", str(STEPS), "state"))


def flat(tree, prefix=""):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(flat(v, f"{prefix}/{k}"))
    return out
  if isinstance(tree, (list, tuple)):
    out = {}
    for i, v in enumerate(tree):
      out.update(flat(v, f"{prefix}/{i}"))
    return out
  return {prefix: np.asarray(tree)}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--steps_per_call", type=int, default=1,
                      help="training.steps_per_call of both runs")
  parser.add_argument("--checkpoint_every", type=int, default=1,
                      help="training.checkpoint_every of both runs")
  args = parser.parse_args()
  global STEPS
  STEPS = args.steps
  # A log at each checkpoint only: a call stops short of every log.
  OPTIONS.extend([
      f"--config.training.steps_per_call={args.steps_per_call}",
      f"--config.training.checkpoint_every={args.checkpoint_every}",
      f"--config.training.log_every={args.checkpoint_every}"])
  rng = random.Random(args.seed)
  base = args.workdir or tempfile.mkdtemp(prefix="kill_resume_")
  sys.path.insert(0, ROOT)
  from ddpm_jax import paths  # pylint: disable=g-import-not-at-top
  straight, killed = paths.join(base, "straight"), paths.join(base, "killed")
  subprocess.run(command(straight), cwd=ROOT, env=env(), check=True,
                 capture_output=True)

  kills_done, killed_at = 0, []  # the latest checkpoint after each kill
  while kills_done < args.kills:
    done_before = latest_step(killed)
    if done_before >= STEPS - 2:
      break  # too close to the end for another kill mid-training
    proc = subprocess.Popen(command(killed), cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if rng.random() < 0.2:
      time.sleep(rng.uniform(0.2, 3.0))  # during start-up
    else:
      # Mid-training: once 1-2 more checkpoints exist, at a random moment
      # (a save of the next step may be in flight).
      target = min(done_before + rng.randint(1, 2), STEPS - 1)
      while latest_step(killed) < target and proc.poll() is None:
        time.sleep(0.02)
      time.sleep(rng.uniform(0.0, 0.3))
    if proc.poll() is not None:
      break  # it finished first
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills_done += 1
    killed_at.append(latest_step(killed))
  p = subprocess.run(command(killed), cwd=ROOT, env=env(),
                     capture_output=True, text=True)
  if p.returncode != 0:
    print(p.stderr[-3000:], file=sys.stderr)
    sys.exit(2)

  a, b = flat(final_params(straight)), flat(final_params(killed))
  assert a.keys() == b.keys()
  worst = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k])))
              for k in a if a[k].dtype.kind == "f")
  steps_equal = all(np.array_equal(a[k], b[k]) for k in a
                    if a[k].dtype.kind != "f")
  print(json.dumps({"kills": kills_done, "killed_at": killed_at,
                    "max_abs_diff": worst,
                    "int_leaves_equal": steps_equal}))
  sys.exit(0 if worst <= 1e-6 and steps_equal else 1)


if __name__ == "__main__":
  main()
