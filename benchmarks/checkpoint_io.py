"""What verifying checkpoints costs: saving and restoring a config's train
state with the digests (ddpm_jax.checkpoints.save / restore_latest: a
digest of every array at save, their check and a finiteness check at
restore) against plain Orbax saves and restores of the same state, and
sampling's read of the same checkpoint (the step and the EMA parameters).

  python benchmarks/checkpoint_io.py --config cifar10 --repeats 5

Alternating timed runs into a temporary folder (--dir to choose one),
after one untimed run of each (the digest pass compiles there). One JSON line per side with
every time and the median, one with the machine and versions, then the
summary: each verified operation's median time as a ratio of the plain one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags

import common

FLAGS = flags.FLAGS
common.define_config_flags()
flags.DEFINE_integer("repeats", 5, "Alternating timed runs per side.")
flags.DEFINE_string("dir", None, "Where to write the checkpoints (default: "
                    "a new temporary folder, removed at the end).")


def main(argv):
  del argv
  config = common.config_from_flags()
  import jax
  import orbax.checkpoint as ocp
  from ddpm_jax import checkpoint_digests, checkpoints, from_config, train
  common.say(f"making the {FLAGS.config} train state and compiling its "
             f"digests ...")
  model, tx = from_config.make_model(config), from_config.make_optimizer(config)
  state = train.create_train_state(config, model, tx)
  jax.block_until_ready(state)
  checkpoint_digests.summarize(state)  # compiled here, not in a timed run
  root = FLAGS.dir or tempfile.mkdtemp(prefix="checkpoint_io_")
  counter = {"step": 0}

  def fresh(name):
    counter["step"] += 1
    return checkpoints.checkpoint_manager(os.path.join(root, name),
                                          max_to_keep=1), counter["step"]

  def plain_save():
    manager, step = fresh("plain")
    seconds = common.timed(lambda: (manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state))), manager.wait_until_finished()))
    manager.close()
    return seconds

  def verified_save():
    manager, step = fresh("verified")
    seconds = common.timed(lambda: (checkpoints.save(manager, step, state),
                                    manager.wait_until_finished()))
    manager.close()
    return seconds

  def plain_restore():
    manager = checkpoints.checkpoint_manager(os.path.join(root, "plain"))
    step = manager.latest_step()
    seconds = common.timed(lambda: jax.block_until_ready(manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(
            state)))["state"]))
    manager.close()
    return seconds

  def verified_restore():
    manager = checkpoints.checkpoint_manager(os.path.join(root, "verified"))
    seconds = common.timed(lambda: jax.block_until_ready(
        checkpoints.restore_latest(manager, state).state))
    manager.close()
    return seconds

  def sampling_read():
    # What sample.py, evaluate.py and the exporter read: the step and the
    # EMA parameters, checked.
    manager = checkpoints.checkpoint_manager(os.path.join(root, "verified"))
    seconds = common.timed(lambda: jax.block_until_ready(
        checkpoints.restore_latest(manager, state,
                                   fields=("step", "ema_params")).state))
    manager.close()
    return seconds

  try:
    # One untimed run of each first: the restores' digest pass compiles
    # for the restored arrays there.
    for fn in (plain_save, verified_save, plain_restore, verified_restore,
               sampling_read):
      fn()
    times = common.alternate({"plain save": plain_save,
                              "verified save": verified_save}, FLAGS.repeats)
    times.update(common.alternate({"plain restore": plain_restore,
                                   "verified restore": verified_restore,
                                   "sampling read": sampling_read},
                                  FLAGS.repeats))
  finally:
    if FLAGS.dir is None:
      shutil.rmtree(root, ignore_errors=True)
  size = sum(x.size * x.dtype.itemsize
             for x in jax.tree_util.tree_leaves(state))
  for name, ts in times.items():
    print(json.dumps({"side": name, "config": FLAGS.config,
                      "state_bytes": int(size), "times_s": ts,
                      "median_s": common.median(ts)}), flush=True)
  print(json.dumps(common.jax_environment()))
  m = {name: common.median(ts) for name, ts in times.items()}
  print(f"verified / plain, median of {FLAGS.repeats}: save "
        f"{m['verified save'] / m['plain save']:.2f}x "
        f"({m['verified save']:.2f} s / {m['plain save']:.2f} s), restore "
        f"{m['verified restore'] / m['plain restore']:.2f}x "
        f"({m['verified restore']:.2f} s / {m['plain restore']:.2f} s); "
        f"sampling's read (step and EMA, checked) "
        f"{m['sampling read'] / m['plain restore']:.2f}x "
        f"({m['sampling read']:.2f} s); state {size / 2**20:.0f} MiB")


if __name__ == "__main__":
  app.run(main)
