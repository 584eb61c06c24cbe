"""What a checkpoint must pass before it is used: the digest of every
array saved with it (ddpm_jax.checkpoint_digests), finiteness at save and
at restore; a checkpoint that fails is set aside and the previous used."""

import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from ddpm_jax import (checkpoint_digests, checkpoints, from_config,
                      storage_messages, train)
from tests.tiny_configs import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_state():
  """A train state of a few arrays under the U-Net's names (two
  convolutions, their EMA and Adam's moments: 17 arrays). The checks go
  array by array, whatever the model; the tiny U-Net's state has 420
  arrays, and the storage library's work per array made each save and
  restore of it take about a second."""
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  params = {"conv_in": {"kernel": jax.random.normal(keys[0], (3, 3, 1, 8)),
                        "bias": jnp.zeros((8,))},
            "conv_out": {"kernel": jax.random.normal(keys[1], (3, 3, 8, 1)),
                         "bias": jnp.zeros((1,))}}
  return train.TrainState(step=jnp.asarray(0, jnp.int32),
                          rng=jax.random.PRNGKey(0), params=params,
                          ema_params=params,
                          opt_state=optax.adam(1e-3).init(params))


def unet_state():
  """The tiny U-Net's initial train state (tests/tiny_configs.py)."""
  config = tiny_config()
  return train.create_train_state(config, from_config.make_model(config),
                                  from_config.make_optimizer(config))


@pytest.fixture(scope="module")
def template():
  return small_state()


def at_step(state, step):
  return state.replace(step=jnp.asarray(step, jnp.int32))


def with_nan(state):
  """``state`` with one NaN in the EMA of the output convolution."""
  ema = jax.tree_util.tree_map(lambda x: x, state.ema_params)
  ema["conv_out"]["kernel"] = ema["conv_out"]["kernel"].at[0, 0, 0, 0].set(
      jnp.nan)
  return state.replace(ema_params=ema)


def saved(tmp_path, states):
  """A manager over ``tmp_path/run`` holding ``states`` {step: state},
  saved with checkpoints.save."""
  manager = checkpoints.checkpoint_manager(str(tmp_path / "run"))
  for step, state in states.items():
    checkpoints.save(manager, step, state, {"epoch": 0, "offset": step})
  manager.wait_until_finished()
  return manager


def overwrite_middle(folder, data=bytes(range(64))):
  """Writes ``data`` into the middle of the largest file under
  ``folder``, as a disk or a copy that changes bytes would."""
  path = max((f for f in glob.glob(f"{folder}/**", recursive=True)
              if os.path.isfile(f)), key=os.path.getsize)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(data)


def truncate_data(workdir, steps):
  """Truncates the OCDBT data files of checkpoints ``steps`` of
  ``workdir``, which the storage library then cannot read."""
  for step in steps:
    data = glob.glob(f"{workdir}/checkpoints/{step}/state/**/d/*",
                     recursive=True)
    assert data
    for f in data:
      os.truncate(f, 100)


def changed_kernel(tree):
  """``tree`` (params or a tree like them) with one value of its input
  convolution's kernel changed to another finite one."""
  kernel = np.array(tree["conv_in"]["kernel"])
  kernel[1, 1, 0, 5] += 0.25
  tree = jax.tree_util.tree_map(lambda x: x, tree)
  tree["conv_in"]["kernel"] = jnp.asarray(kernel)
  return tree


def store_as(tmp_path, step, state):
  """Replaces checkpoint ``step``'s stored state with ``state``, the
  digests saved with it untouched."""
  other = checkpoints.checkpoint_manager(str(tmp_path / "other"))
  other.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(
      state)))
  other.wait_until_finished()
  target = tmp_path / "run" / "checkpoints" / str(step) / "state"
  shutil.rmtree(target)
  shutil.copytree(tmp_path / "other" / "checkpoints" / str(step) / "state",
                  target)
  shutil.rmtree(tmp_path / "other")


def change_a_value(tmp_path, step, state):
  """Replaces checkpoint ``step``'s stored state with ``state`` with one
  value of its params changed to another finite one, the digests saved with
  it untouched: stored bytes that differ from those saved, which only the
  digest can tell. (Random bytes in its files, as a disk would change them,
  mostly land in zstd-compressed data and fail to decode:
  test_random_bytes_... covers that; this is the case where they decode.)"""
  store_as(tmp_path, step, state.replace(params=changed_kernel(state.params)))


def test_digests_do_not_depend_on_the_values_position_only():
  a = {"x": jnp.arange(6, dtype=jnp.float32)}
  b = {"x": jnp.arange(6, dtype=jnp.float32)[::-1]}
  flipped = np.arange(6, dtype=np.float32)
  flipped.view(np.uint32)[2] ^= 1 << 30
  c = {"x": jnp.asarray(flipped)}
  sa, sb, sc = (checkpoint_digests.summarize(t) for t in (a, b, c))
  assert sa["x"][0] != sb["x"][0] != sc["x"][0] != sa["x"][0]
  assert checkpoint_digests.mismatches(checkpoint_digests.to_json(sa),
                                       sc) == ["x"]
  assert checkpoint_digests.mismatches(checkpoint_digests.to_json(sa),
                                       sa) == []


def test_changed_bytes_fail_the_digest_check_and_the_previous_is_used(
    tmp_path, template, capsys):
  manager = saved(tmp_path, {1: at_step(template, 1),
                             2: at_step(template, 2)})
  assert os.path.isdir(tmp_path / "run" / "checkpoints" / "2" / "digests")
  change_a_value(tmp_path, 2, at_step(template, 2))
  restored = checkpoints.restore_latest(manager, template, set_aside=True)
  assert int(restored.state.step) == 1
  err = capsys.readouterr().err
  assert ("checkpoint 2 fails its check (digest check failed for "
          "params.conv_in.kernel: the bytes changed since the save)"
          ) in err, err
  assert "using checkpoint 1" in err
  # Set aside, not deleted.
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints_unreadable")) == [
      "2"]
  assert manager.all_steps() == [1]


def test_reading_some_fields_checks_those_and_reads_nothing_else(
    tmp_path, template, capsys):
  # What sampling reads: the step and the EMA parameters. A changed value in
  # the optimizer state, which a whole restore refuses, does not stop it;
  # one in the EMA does, as for a whole restore.
  fields = ("step", "ema_params")
  saved(tmp_path, {1: at_step(template, 1), 2: at_step(template, 2)})
  state = at_step(template, 2)
  adam = state.opt_state[0]
  store_as(tmp_path, 2, state.replace(opt_state=(
      adam._replace(mu=changed_kernel(adam.mu)),) + state.opt_state[1:]))

  def restore(**options):
    return checkpoints.restore_latest(checkpoints.checkpoint_manager(
        str(tmp_path / "run"), read_only=True), template, **options)

  some = restore(fields=fields)
  assert sorted(some.state) == sorted(fields) and int(some.state["step"]) == 2
  for a, b in zip(jax.tree_util.tree_leaves(some.state["ema_params"]),
                  jax.tree_util.tree_leaves(template.ema_params)):
    np.testing.assert_array_equal(a, b)
  assert capsys.readouterr().err == ""
  assert int(restore().state.step) == 1  # the whole state: refused
  assert "digest check failed for opt_state.0.mu.conv_in.kernel" in (
      capsys.readouterr().err)

  store_as(tmp_path, 2, state.replace(
      ema_params=changed_kernel(state.ema_params)))
  assert int(restore(fields=fields).state["step"]) == 1
  assert ("checkpoint 2 fails its check (digest check failed for "
          "ema_params.conv_in.kernel") in capsys.readouterr().err


def test_a_field_the_checkpoint_lacks_is_one_error_not_a_crash(tmp_path,
                                                               template):
  # Orbax's partial restore gives a field the checkpoint does not hold as
  # the template's own leaf (here shapes, not arrays): refused by name.
  manager = checkpoints.checkpoint_manager(str(tmp_path / "run"))
  manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(
      {"step": template.step, "params": template.params})))
  manager.wait_until_finished()
  shapes = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      template)
  with pytest.raises(ValueError, match=r"checkpoint 1 in .* is unreadable "
                     r"\(it holds no ema_params\.conv_in\.bias, "
                     r"ema_params\.conv_in\.kernel, ema_params\.conv_out\.bias"
                     r" and 1 more\)"):
    checkpoints.restore_latest(checkpoints.checkpoint_manager(
        str(tmp_path / "run"), read_only=True), shapes,
        fields=("step", "ema_params"))
  with pytest.raises(TypeError, match="not the string 'ema_params'"):
    checkpoints.restore_latest(manager, shapes, fields="ema_params")


def test_another_models_checkpoint_is_named_from_its_saved_shapes(
    tmp_path, template):
  # The parameters' names and shapes are compared before any array is read:
  # from the shapes the digests item lists (here with every data file
  # truncated, so that Orbax's own metadata cannot be read), and, for a
  # checkpoint saved before they were listed, from Orbax's metadata.
  wider = template.replace(params={**template.params, "conv_in": {
      "kernel": jnp.zeros((3, 3, 1, 16)), "bias": jnp.zeros((16,))}})
  want = ("params.conv_in.bias has shape (8,) in the checkpoint and (16,) in "
          "the config's model; use the config that trained it")
  saved(tmp_path, {1: at_step(template, 1)})
  step_dir = str(tmp_path / "run" / "checkpoints" / "1")
  assert checkpoints.params_mismatch(template, step_dir) is None
  truncate_data(tmp_path / "run", (1,))
  assert checkpoints.params_mismatch(wider, step_dir) == want

  manager = checkpoints.checkpoint_manager(str(tmp_path / "old"))
  summary = checkpoint_digests.summarize(template)
  manager.save(1, args=ocp.args.Composite(
      state=ocp.args.StandardSave(template),
      digests=ocp.args.JsonSave(checkpoint_digests.to_json(summary))))
  manager.wait_until_finished()
  old = str(tmp_path / "old" / "checkpoints" / "1")
  assert checkpoints.params_mismatch(template, old) is None
  assert checkpoints.params_mismatch(wider, old) == want


def test_a_nonfinite_state_is_never_saved(tmp_path, template):
  manager = saved(tmp_path, {1: at_step(template, 1)})
  with pytest.raises(checkpoints.NonFiniteStateError,
                     match=r"step 2 is not finite \(ema_params.conv_out."
                     r"kernel\): not saved; the last checkpoint is step 1"):
    checkpoints.save(manager, 2, with_nan(at_step(template, 2)))
  manager.wait_until_finished()
  assert manager.all_steps() == [1]
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["1"]


def test_a_nonfinite_checkpoint_is_set_aside(tmp_path, template, capsys):
  # Written without digests or the finiteness check (as before they
  # existed): the restore still refuses the NaN.
  manager = saved(tmp_path, {1: at_step(template, 1)})
  manager.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave(
      with_nan(at_step(template, 2)))))
  manager.wait_until_finished()
  restored = checkpoints.restore_latest(manager, template, set_aside=True)
  assert int(restored.state.step) == 1
  err = capsys.readouterr().err
  assert ("checkpoint 2 fails its check (not finite: ema_params.conv_out."
          "kernel hold NaN or infinite values)") in err, err


def test_no_usable_checkpoint_is_one_error_naming_them(tmp_path, template):
  manager = saved(tmp_path, {1: at_step(template, 1),
                             2: at_step(template, 2)})
  for step in (1, 2):
    change_a_value(tmp_path, step, at_step(template, step))
  with pytest.raises(ValueError) as e:
    checkpoints.restore_latest(manager, template, set_aside=True)
  line = str(e.value)
  assert "\n" not in line and "checkpoint 2 in" in line, line
  assert "(and so do checkpoints 1): no checkpoint can be used" in line
  # Nothing moved when nothing can be used.
  assert manager.all_steps() == [1, 2]
  assert not (tmp_path / "run" / "checkpoints_unreadable").exists()


def test_random_bytes_in_the_newest_checkpoint_never_reach_training(
    tmp_path, template, capsys):
  # 64 bytes written into the middle of its largest data file: whether
  # they land in a stored array (the digest check) or in what the reader
  # decodes (a read error), the checkpoint is set aside.
  manager = saved(tmp_path, {1: at_step(template, 1),
                             2: at_step(template, 2)})
  overwrite_middle(tmp_path / "run" / "checkpoints" / "2" / "state")
  restored = checkpoints.restore_latest(manager, template, set_aside=True)
  assert int(restored.state.step) == 1
  assert "using checkpoint 1" in capsys.readouterr().err
  assert manager.all_steps() == [1]


@pytest.mark.parametrize("position", [
    {"epoch": "zero", "offset": 0}, {"epoch": 0}, {"epoch": 0, "offset": -8},
    {"epoch": True, "offset": 8}, [0, 8]])
def test_a_damaged_input_position_is_set_aside(tmp_path, template, capsys,
                                               position):
  manager = saved(tmp_path, {1: at_step(template, 1),
                             2: at_step(template, 2)})
  meta = tmp_path / "run" / "checkpoints" / "2" / "data" / "metadata"
  meta.write_text(json.dumps(position))
  restored = checkpoints.restore_latest(manager, template, set_aside=True)
  assert int(restored.state.step) == 1
  assert restored.data_position == {"epoch": 0, "offset": 1}
  err = capsys.readouterr().err
  assert "warning: checkpoint 2 " in err and "moved it to" in err, err
  assert (tmp_path / "run" / "checkpoints_unreadable" / "2").is_dir()


def test_an_offset_beyond_the_data_is_refused():
  from ddpm_jax import data, streams
  images = np.zeros((40, 8, 8, 1), np.float32)
  with pytest.raises(streams.DataError, match="offset 48.* beyond the "
                     "dataset's 40 examples"):
    next(data.array_batches(images, 8, 0, streams.Position(0, 48)))
  # The end of an epoch is a position a save can hold.
  next(data.array_batches(images, 8, 0, streams.Position(0, 40)))


def test_a_training_run_removes_partial_save_folders(tmp_path, template):
  # A save cut off mid-way (a SIGKILL, a storage outage) leaves its
  # temporary folder. A reader leaves it alone; the workdir's writer (a
  # training run holding the lock) removes it, and no checkpoint.
  saved(tmp_path, {1: at_step(template, 1), 2: at_step(template, 2)})
  ckpts = tmp_path / "run" / "checkpoints"
  partial = ckpts / "3.orbax-checkpoint-tmp-1765000000"
  shutil.copytree(ckpts / "2", partial)
  checkpoints.checkpoint_manager(str(tmp_path / "run"),
                                 read_only=True).close()
  assert partial.is_dir()
  manager = checkpoints.checkpoint_manager(str(tmp_path / "run"),
                                           remove_partial=True)
  checkpoints.save(manager, 3, at_step(template, 3), {"epoch": 0,
                                                      "offset": 3})
  manager.wait_until_finished()
  assert sorted(os.listdir(ckpts)) == ["1", "2", "3"]


def test_unreadable_checkpoints_are_one_clean_line(tmp_path, template):
  # Every checkpoint damaged so that the storage library cannot read it
  # (its OCDBT data files truncated): the line names them and says what to
  # do, without the library's internals. (Not zeros written into the middle
  # of a data file: where they land depends on the order the arrays were
  # written in, and some spots decode and fail the digest instead, which
  # test_random_bytes_... covers.)
  manager = saved(tmp_path, {1: at_step(template, 1),
                             2: at_step(template, 2)})
  truncate_data(tmp_path / "run", (1, 2))
  with pytest.raises(ValueError) as e:
    checkpoints.restore_latest(manager, template, set_aside=True)
  line = str(e.value)
  assert "\n" not in line and "checkpoint 2 in" in line, line
  assert "(and so do checkpoints 1)" in line, line
  for internal in ("pybind11", "<bound method", "TensorStore(",
                   "source locations", "tensorstore_spec"):
    assert internal not in line, line
  assert "is unreadable (" in line and "move the checkpoints folder" in line
  assert manager.all_steps() == [1, 2]
  # What was read and why it failed, without the drivers' chain.
  assert 'Error reading "' in line and "is not valid for value of size 100" \
      in line and "driver" not in line, line


# What the test's process runs: a restore of every checkpoint in the
# workdir given, which all fail.
_RESTORE = """
import sys
from ddpm_jax import checkpoints, from_config, train
from tests.tiny_configs import tiny_config
config = tiny_config()
template = train.create_train_state(config, from_config.make_model(config),
                                    from_config.make_optimizer(config))
manager = checkpoints.checkpoint_manager(sys.argv[1], read_only=True)
try:
  checkpoints.restore_latest(manager, template)
except ValueError as e:
  sys.exit(f"error: {e}")
"""


@pytest.mark.slow
def test_a_failed_restore_prints_nothing_but_its_line(tmp_path):
  # The reads a failed restore leaves behind ended in 7,000 lines of 'Event
  # loop is closed' tracebacks and the libraries' own warnings around the
  # line (train.py and sample.py on such a workdir): the U-Net's state,
  # with its hundreds of arrays to read.
  state = unet_state()
  saved(tmp_path, {1: at_step(state, 1), 2: at_step(state, 2)})
  truncate_data(tmp_path / "run", (1, 2))
  p = subprocess.run([sys.executable, "-c", _RESTORE, str(tmp_path / "run")],
                     cwd=ROOT, capture_output=True, text=True, timeout=300,
                     env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 1 and len(lines) == 1, p.stderr[-3000:]
  assert lines[0].startswith("error: checkpoint 2 in "), lines[0]


@pytest.mark.parametrize("tail", [
    " [tensorstore_spec='{\"driver\":\"zarr\"}']",
    " [tensorstore_spec[1]='{\"base\":{\"driver\":\"zarr\"}}']",
    " [source locations='tensorstore/kvstore/ocdbt/io.cc:12']"])
def test_a_read_error_is_cut_where_the_library_internals_begin(tail):
  # TensorStore's messages, as a failed restore raises them; which form
  # of the spec it appends depends on the read that failed first.
  e = ValueError('OUT_OF_RANGE: Error opening "cast" driver: Error opening '
                 '"zarr" driver: Error reading "a.b/.zarray" in OCDBT '
                 'database at local file "/w/4/state/": Error reading Byte '
                 'range [0, 2608) of local file "/w/4/state/d/x": Requested '
                 'byte range [0, 2608) is not valid for value of size 100'
                 + tail)
  assert storage_messages.read_error(e) == (
      'Error reading "a.b/.zarray": Requested byte range [0, 2608) is not '
      'valid for value of size 100')
  zstd = ValueError('DATA_LOSS: Error reading "params.x/0.0" in OCDBT '
                    'database at local file "/w/": ZSTD_decompressStream() '
                    'failed: Data corruption detected' + tail)
  assert storage_messages.read_error(zstd) == (
      'Error reading "params.x/0.0": Data corruption detected')
