"""Orbax checkpoints of the train state, and the run's saved config.

A checkpoint has three items: ``state`` (the step, the base rng key,
params, EMA params and optimizer state), ``data`` (the input pipeline's
position, JSON) and ``digests`` (each state array's digest, JSON:
:mod:`ddpm_jax.checkpoint_digests`). The step's randomness is
``fold_in(rng, step)`` and the input stream is a function of (seed,
position), so restoring both resumes a run exactly where it stopped. A
state with a NaN or an infinity is never saved, and a restored state is
used only if every array read is finite and matches its saved digest
(sampling reads only the step and the parameters it uses)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from configs import default
from ddpm_jax import (checkpoint_digests, parallel, paths,
                      storage_messages, streams)
from ddpm_jax.models.classifier import (NoisyClassifier,
                                        classifier_from_config,
                                        init_classifier)

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
STATE_ITEM = "state"
DATA_ITEM = "data"
DIGESTS_ITEM = "digests"
# The file of a JSON item (Orbax's JsonSave) in its folder.
_JSON_ITEM_FILE = "metadata"


class NonFiniteStateError(FloatingPointError):
  """A train state holds a NaN or an infinity."""


def _names(names, n=3):
  more = f" and {len(names) - n} more" if len(names) > n else ""
  return ", ".join(names[:n]) + more


class _RoutineReadOnlyNotes(logging.Filter):
  """Drops the warnings Orbax logs on every read-only restore (sampling,
  evaluation, export), which read like errors but report nothing wrong:
  the options a read-only manager ignores, the read-only directory, and
  the step metadata missing from a state item (whose metadata
  :func:`params_mismatch` reads on its own for a checkpoint saved without
  the shapes; the step's is elsewhere)."""

  _NOTES = ("CheckpointManagerOptions.read_only=True",
            "Given directory is read only")

  def filter(self, record: logging.LogRecord) -> bool:
    msg = str(record.msg)
    if msg.startswith(self._NOTES):
      return False
    return not (msg.startswith("Metadata file does not exist") and
                str(record.args[0] if record.args else "").endswith(
                    f"/{STATE_ITEM}/_CHECKPOINT_METADATA"))


logging.getLogger("absl").addFilter(_RoutineReadOnlyNotes())


def checkpoint_manager(workdir: str, max_to_keep: int = 3,
                       read_only: bool = False,
                       remove_partial: bool = False
                       ) -> ocp.CheckpointManager:
  """A CheckpointManager over ``workdir/checkpoints`` (a local path or a
  URL such as ``gs://bucket/run``). ``remove_partial``: the folders of
  saves that never committed (a process killed or a storage cut off
  mid-save) are removed, in the background until the first save; only
  for the workdir's one writer (a training run holding its lock), as
  another run's save in flight looks the same."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
      cleanup_tmp_directories=remove_partial and not read_only)
  return ocp.CheckpointManager(
      paths.absolute(paths.join(workdir, CHECKPOINT_DIR)), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_position: Optional[dict] = None) -> None:
  """Saves ``state`` (a pytree), the digest of each of its arrays and the
  input ``data_position`` (a JSON dict) as ``step``, asynchronously.
  Raises :class:`NonFiniteStateError`, saving nothing, if any array holds
  a NaN or an infinity."""
  summary = checkpoint_digests.summarize(state)
  bad = checkpoint_digests.nonfinite(summary)
  if bad:
    raise NonFiniteStateError(
        f"the train state of step {step} is not finite ({_names(bad)}): "
        f"not saved; the last checkpoint is step {manager.latest_step()}")
  items = {STATE_ITEM: ocp.args.StandardSave(state),
           DIGESTS_ITEM: ocp.args.JsonSave(checkpoint_digests.to_json(
               summary, checkpoint_digests.shapes(state)))}
  if data_position is not None:
    items[DATA_ITEM] = ocp.args.JsonSave(data_position)
  manager.save(step, args=ocp.args.Composite(**items))


def verify(state: Any, saved_digests: Optional[dict],
           fields: Optional[Sequence[str]] = None) -> Optional[str]:
  """Why a restored ``state`` must not be used, in one sentence (an array
  that is not finite, or whose digest differs from ``saved_digests``, the
  checkpoint's digests item); None when it passes. A checkpoint written
  before digests existed (None) is checked for finiteness only.
  ``fields``: ``state`` holds only these fields of the train state (see
  :func:`restore_latest`), checked against their own digests."""
  summary = checkpoint_digests.summarize(state)
  if saved_digests is not None and fields is not None:
    saved_digests = dict(saved_digests, digests={
        name: digest
        for name, digest in (saved_digests.get("digests") or {}).items()
        if name.split(".")[0] in fields})
  if saved_digests is not None:
    changed = checkpoint_digests.mismatches(saved_digests, summary)
    if changed:
      return (f"digest check failed for {_names(changed)}: the bytes "
              f"changed since the save")
  bad = checkpoint_digests.nonfinite(summary)
  if bad:
    return f"not finite: {_names(bad)} hold NaN or infinite values"
  return None


def _restore_fields(template: Any, fields: Sequence[str]
                    ) -> ocp.args.PyTreeRestore:
  """Orbax's arguments to restore only ``fields`` of a train state saved
  whole, onto those fields of ``template`` (arrays or
  ``jax.ShapeDtypeStruct`` leaves with their shardings)."""
  item = {field: getattr(template, field) for field in fields}
  restore_args = jax.tree_util.tree_map(
      lambda leaf: ocp.ArrayRestoreArgs(sharding=leaf.sharding,
                                        global_shape=leaf.shape,
                                        dtype=leaf.dtype), item)
  return ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                partial_restore=True)


class Restored(NamedTuple):
  """A restored checkpoint: the state, and the input position saved with it
  (None for a checkpoint written without one)."""
  state: Any
  data_position: Optional[dict]


def restore_latest(manager: ocp.CheckpointManager, template: Any,
                   set_aside: bool = False,
                   fields: Optional[Sequence[str]] = None
                   ) -> Optional[Restored]:
  """The newest readable checkpoint, its state restored onto ``template``
  (whose arrays' shardings it takes, whatever mesh wrote it), or None if
  there is none.

  ``fields`` (e.g. ``('step', 'ema_params')``, what sampling uses): only
  these fields of the train state are read and checked, and the state
  restored is a dict of them; the rest of the checkpoint (the optimizer
  state, the other parameters: three quarters of it with Adam) is not
  read. The same manager must then always be given ``fields``.

  A newest checkpoint that fails to restore while an older one succeeds is
  taken to be damaged (a truncated write): a message names it, and with
  ``set_aside`` its directory is moved to ``checkpoints_unreadable/`` next
  to ``checkpoints/`` (kept, never deleted) so that training can save that
  step again; with several processes, every one calls this and only the
  process given ``set_aside`` moves it, after all have finished reading
  (a barrier on each side). If no checkpoint restores, the newest one's
  error is raised and nothing is moved: a config that no longer matches
  the checkpoints is not mistaken for damage.
  """
  if isinstance(fields, str):
    raise TypeError(f"fields must be a sequence of field names, not the "
                    f"string {fields!r}")
  storage_messages.quiet_storage_noise()
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      # A checkpoint of another model is refused from the shapes saved with
      # it, before a restore starts reads that would outlive the error.
      mismatch = params_mismatch(
          template, paths.join(str(manager.directory), str(step)))
      if mismatch:
        raise ValueError(mismatch)
      items = {STATE_ITEM: ocp.args.StandardRestore(template)
               if fields is None else _restore_fields(template, fields)}
      for name in (DATA_ITEM, DIGESTS_ITEM):
        if paths.isdir(paths.join(str(manager.directory), str(step), name)):
          items[name] = ocp.args.JsonRestore()
      out = manager.restore(step, args=ocp.args.Composite(**items))
      if fields is not None:
        # Orbax gives a field the checkpoint lacks as the template's leaf.
        missing = [checkpoint_digests.leaf_name(path) for path, leaf in
                   jax.tree_util.tree_leaves_with_path(out[STATE_ITEM])
                   if not isinstance(leaf, jax.Array)]
        if missing:
          raise ValueError(f"it holds no {_names(missing)}")
      position = out[DATA_ITEM] if DATA_ITEM in items else None
      restored = Restored(out[STATE_ITEM],
                          None if position is None else dict(position))
    except Exception as e:  # pylint: disable=broad-except
      failures.append(
          (step, f"is unreadable ({storage_messages.read_error(e)})", e))
      continue
    problem = verify(restored.state, dict(out[DIGESTS_ITEM])
                     if DIGESTS_ITEM in items else None, fields)
    if not problem and position is not None:
      try:
        streams.Position.from_json(restored.data_position)
      except streams.DataError as e:
        problem = f"{e} ({DATA_ITEM}/ of the checkpoint)"
    if problem:
      failures.append((step, f"fails its check ({problem})",
                       ValueError(problem)))
      continue
    if failures:
      # The others may still be reading: move only once all are done.
      parallel.host_barrier(f"restore_checked_{step}")
    for bad, what, _ in failures:
      where = ""
      if set_aside:
        where = f"; moved it to {_set_aside(manager, bad)}"
      print(f"warning: checkpoint {bad} {what}{where}; using checkpoint "
            f"{step}", file=sys.stderr)
    if failures:
      parallel.host_barrier(f"restore_set_aside_{step}")
      manager.reload()
    return restored
  if failures:
    step, what, e = failures[0]
    others = ", ".join(str(f[0]) for f in failures[1:])
    others = f" (and so do checkpoints {others})" if others else ""
    raise ValueError(f"checkpoint {step} in {manager.directory} {what[:400]}"
                     f"{others}: no checkpoint can be used (copy a good one "
                     f"back from a backup, or move the checkpoints folder "
                     f"away to train from the start)") from e
  return None


def _named_shapes(tree: Any) -> dict:
  """{'a.b.c': shape} for every array of a nested dict."""
  return {".".join(str(getattr(k, "key", k)) for k in path):
          tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _saved_param_shapes(step_dir: str) -> Optional[dict]:
  """{'a.b.c': shape} of the parameters saved in checkpoint ``step_dir``:
  from its digests item where that lists the shapes (one small file), else
  from Orbax's metadata of its state item (which opens every array); None
  where neither can be read (the restore itself then decides)."""
  try:
    saved = json.loads(paths.read_text(paths.join(
        step_dir, DIGESTS_ITEM, _JSON_ITEM_FILE)))["shapes"]
    return {name[len("params."):]: tuple(shape)
            for name, shape in saved.items() if name.startswith("params.")}
  except Exception:  # pylint: disable=broad-except
    pass  # saved without shapes: Orbax's metadata
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      saved = checkpointer.metadata(paths.join(
          step_dir, STATE_ITEM)).item_metadata["params"]
    return _named_shapes(saved)
  except Exception:  # pylint: disable=broad-except
    return None


def params_mismatch(template: Any, step_dir: str) -> Optional[str]:
  """How the parameters saved in checkpoint ``step_dir`` differ in names or
  shapes from ``template.params``, in one sentence; None where they agree,
  or where the saved shapes cannot be read (the restore itself then
  decides)."""
  want = getattr(template, "params", None)
  if want is None:
    return None
  saved = _saved_param_shapes(step_dir)
  if saved is None:
    return None
  want = _named_shapes(want)
  only_saved = sorted(set(saved) - set(want))
  only_want = sorted(set(want) - set(saved))
  if only_saved or only_want:
    parts = [f"{len(names)} only {where} (e.g. params.{names[0]})"
             for names, where in ((only_saved, "in the checkpoint"),
                                  (only_want, "in the config's model"))
             if names]
    return (f"its parameters are not those of the config's model: "
            f"{'; '.join(parts)}; use the config that trained it")
  for name in sorted(want):
    if saved[name] != want[name]:
      return (f"params.{name} has shape {saved[name]} in the checkpoint and "
              f"{want[name]} in the config's model; use the config that "
              f"trained it")
  return None


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  src = paths.join(str(manager.directory), str(step))
  dest_dir = paths.join(paths.dirname(str(manager.directory)),
                        "checkpoints_unreadable")
  paths.makedirs(dest_dir)
  dest = paths.join(dest_dir, f"{step}")
  n = 1
  while paths.exists(dest):
    dest = paths.join(dest_dir, f"{step}.{n}")
    n += 1
  paths.move(src, dest)
  return dest


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the run's config as JSON (for sample.py and for the record)."""
  paths.write_text(paths.join(workdir, CONFIG_FILE),
                   config.to_json_best_effort(indent=2, sort_keys=True))


# Sections every saved run holds: they fix the model, its noise schedule and
# its data. A config.json without one is damaged, not old, and is refused
# rather than completed from today's defaults.
REQUIRED_SECTIONS = ("data", "model", "diffusion")


class SavedConfigError(ValueError):
  """A workdir's config.json is damaged or incomplete."""


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run wrote into ``workdir``, merged onto today's
  defaults (``configs/default.py``), so that a workdir written before a
  field existed still loads. Raises :class:`SavedConfigError`, naming the
  file and the field, for malformed JSON, a missing section of
  :data:`REQUIRED_SECTIONS`, a section that is not an object (``null``),
  or a field whose type does not fit the default's."""
  path = paths.join(workdir, CONFIG_FILE)
  text = paths.read_text(path)
  fix = "restore the file the run wrote (or retrain)"
  try:
    saved = json.loads(text)
  except json.JSONDecodeError as e:
    raise SavedConfigError(f"{path} is not valid JSON ({e.msg} at line "
                           f"{e.lineno}, column {e.colno}): {fix}") from None
  if not isinstance(saved, dict):
    raise SavedConfigError(f"{path} holds a JSON {type(saved).__name__}, "
                           f"not a config object: {fix}")
  for section in REQUIRED_SECTIONS:
    if section not in saved:
      raise SavedConfigError(f"{path} has no '{section}' section (every run "
                             f"saves it): {fix}")
  _check_sections(saved, default.get_default_config(), path, fix, "")
  try:
    return default.with_defaults(saved)
  except TypeError as e:
    raise SavedConfigError(f"{path}: {e}: {fix}") from None


def _check_sections(saved: dict, defaults: ml_collections.ConfigDict,
                    path: str, fix: str, where: str) -> None:
  """Every section the defaults have is an object in ``saved`` too."""
  for key, value in saved.items():
    if key in defaults and isinstance(defaults[key],
                                      ml_collections.ConfigDict):
      if not isinstance(value, dict):
        raise SavedConfigError(
            f"{path}: '{where}{key}' is {json.dumps(value)[:40]}, not a "
            f"section: {fix}")
      _check_sections(value, defaults[key], path, fix, f"{where}{key}.")


# A train_classifier.py workdir: config.json and the params in this folder.
CLASSIFIER_DIR = "classifier_params"


def save_classifier(workdir: str, config: ml_collections.ConfigDict,
                    params: Any) -> None:
  """Writes a trained guidance classifier's config and params into
  ``workdir`` (refusing to replace existing params)."""
  path = paths.join(paths.absolute(workdir), CLASSIFIER_DIR)
  if paths.exists(path):
    raise FileExistsError(f"{path} exists: give a new --workdir")
  paths.makedirs(workdir)
  write_config(workdir, config)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, jax.device_get(params))


def classifier_config(workdir: str) -> ml_collections.ConfigDict:
  """The config of a ``train_classifier.py`` workdir (its params unread)."""
  if not paths.isdir(paths.join(paths.absolute(workdir), CLASSIFIER_DIR)):
    raise FileNotFoundError(f"{workdir} has no {CLASSIFIER_DIR}: train one "
                            f"with train_classifier.py --workdir {workdir}")
  return read_config(workdir)


def load_classifier(workdir: str) -> Tuple[ml_collections.ConfigDict,
                                           NoisyClassifier, Any]:
  """(config, classifier, params as NumPy) of a ``train_classifier.py``
  workdir."""
  config = classifier_config(workdir)
  classifier = classifier_from_config(config.classifier)
  template = jax.eval_shape(lambda: init_classifier(
      classifier, config.data.image_size, config.data.channels, config.seed))
  with ocp.StandardCheckpointer() as ckpt:
    params = ckpt.restore(paths.join(paths.absolute(workdir),
                                     CLASSIFIER_DIR), template)
  return config, classifier, jax.tree_util.tree_map(np.asarray, params)
