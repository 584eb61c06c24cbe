"""The training loop: resume from the workdir's latest checkpoint, run the
jitted step, log, checkpoint, evaluate and write sample grids, and stop
cleanly on SIGTERM / SIGINT or a pod's preemption notice."""

from __future__ import annotations

import contextlib
import signal
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from ddpm_jax import (checkpoint_saves, checkpoints, data, hlo_costs, images,
                      parallel, paths, progress, write_deadlines)
from ddpm_jax.evaluators import common as evaluators_common
from ddpm_jax.from_config import (ConfigError, learning_rate_fn, make_model,
                                  make_optimizer, make_schedule)
from ddpm_jax.run import hardware_use, profile_window, summary, workdir_lock
from ddpm_jax.samplers import generate as generate_lib
from ddpm_jax.train.state import TrainState, create_train_state
from ddpm_jax.train.step import make_multi_step, make_train_step
from ddpm_jax.validation import validate_config


class _SampleGrid:
  """Writes a grid of ``sampling.num_samples`` EMA samples to
  ``workdir/samples/step_N.png`` (and ``.npz``). Every process samples (the
  parameters may span processes); process 0 alone writes."""

  def __init__(self, config, model, workdir: str, write: bool,
               deadline=contextlib.nullcontext):
    self._config, self._model = config, model
    self._workdir, self._write = workdir, write
    self._deadline = deadline  # what -> a context bounding that write
    self._path = ""
    self.title = (f"drawing the sample grid ({config.sampling.num_samples} "
                  f"samples)")

  def run(self, params, step: int):
    c, n = self._config, self._config.sampling.num_samples
    x = generate_lib.generate(c, self._model, params, n,
                              min(n, c.sampling.batch_size), seed=c.seed)
    prefix = paths.join(self._workdir, "samples", f"step_{step:08d}")
    if self._write:
      with self._deadline(f"the sample grid {prefix}.png"):
        images.write_samples(prefix, x,
                             images.display_scale(c.data.image_size))
    self._path = prefix + ".png"
    return iter(())

  def summary(self, results) -> str:
    del results
    return f"wrote {self._path}"


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str, force_unlock: bool = False
                       ) -> TrainState:
  """Trains (resuming from ``workdir``'s latest checkpoint), checkpoints and
  writes EMA sample grids to ``workdir/samples``.

  On a multi-host job every process runs this; each loads its own share of
  the batch, and process 0 alone writes logs, grids and the config.
  Process 0 holds the workdir's lock (:mod:`ddpm_jax.run.workdir_lock`)
  while it trains; ``force_unlock`` takes over a lock another run left.
  """
  validate_config(config)
  # One process alone: SIGTERM/SIGINT set a flag checked between steps,
  # from before anything is written to the workdir (a preemption notice
  # can come during start-up). Several: JAX's preemption service catches
  # SIGTERM on any of them and all agree on the call to stop before
  # (manager.reached_preemption). The service sets that point one past the
  # furthest counter it was shown and stops only on that exact value, so
  # it counts calls, not steps: with steps_per_call > 1 the step would jump
  # past it and no host would stop.
  multihost = jax.process_count() > 1
  stop = _StopOnSignal(sigterm=not multihost)
  lock = None
  try:
    paths.check_reachable(workdir)
    data.check_source(config)  # before anything is written to the workdir
    paths.check_writable_folder(workdir, "--workdir")
    paths.makedirs(workdir)
    if jax.process_index() == 0:
      lock = workdir_lock.acquire(workdir, force=force_unlock)
    if multihost:  # the others start once process 0 holds it
      parallel.host_barrier("workdir_locked")
    return _train(config, workdir, stop, multihost)
  finally:
    stop.restore()
    if lock is not None:
      failing = sys.exc_info()[1]
      try:
        lock.release()
      except paths.StorageError as e:
        if failing is None:
          raise
        # The error on its way matters more; this one is a warning.
        print(f"warning: {e}", file=sys.stderr)


def _train(config: ml_collections.ConfigDict, workdir: str,
           stop: _StopOnSignal, multihost: bool) -> TrainState:
  """:func:`train_and_evaluate` once its signal handlers are installed and
  the workdir is locked."""
  model, tx, schedule = make_model(config), make_optimizer(config), \
      make_schedule(config)
  mesh = parallel.make_mesh()
  lead = jax.process_index() == 0
  bs = int(config.training.batch_size)
  if bs % mesh.size:
    hint = (" (or JAX_NUM_CPU_DEVICES=1 for one CPU device)"
            if jax.default_backend() == "cpu" else "")
    raise ConfigError(f"config field training.batch_size={bs} is invalid: "
                      f"set --config.training.batch_size to a multiple of "
                      f"the {mesh.size} devices{hint}")
  fsdp = bool(config.parallel.fsdp)
  # (the lock is held: a partial save folder is a dead run's)
  manager = checkpoints.checkpoint_manager(
      workdir, config.training.max_to_keep, remove_partial=True)
  state = create_train_state(config, model, tx, mesh, fsdp)
  state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
  position = data.Position()
  restored = checkpoints.restore_latest(manager, state, set_aside=lead)
  total = int(config.training.num_steps)
  if restored is not None and int(restored.state.step) >= total:
    # A finished run, run again: nothing is written (config, events).
    if lead:
      print(f"{workdir} is already at step {int(restored.state.step)} of "
            f"{total} (training.num_steps): nothing to do")
    return restored.state
  if restored is not None:
    state = restored.state
    if restored.data_position is not None:
      position = data.Position.from_json(restored.data_position)
    else:  # written without one: the stream from the start
      print(f"warning: checkpoint {int(state.step)} has no input position; "
            f"the input stream restarts", file=sys.stderr)
    if lead:
      print(f"Resuming from {workdir} at step {int(state.step)}.")
  deadlines = write_deadlines.Deadlines(config.training.storage_timeout_s)
  step = int(state.step)

  def deadline(what):
    # Bounds a write of `what` (the last checkpoint and the step read when
    # it fires; reading them touches no storage).
    def late():
      return write_deadlines.unanswered(
          f"{what} could not be written", deadlines.timeout_s,
          manager.latest_step(), step)
    return deadlines.guard(("write", what), late)

  if lead:
    with deadline(paths.join(workdir, checkpoints.CONFIG_FILE)):
      checkpoints.write_config(workdir, config)

  start = int(state.step)
  k = int(config.training.steps_per_call)
  step_fn = (make_train_step(config, model, tx, mesh, state_shardings)
             if k == 1 else
             make_multi_step(config, model, tx, mesh, state_shardings, k))
  schedule = jax.device_put(schedule, parallel.replicated(mesh))
  batches = parallel.prefetch_to_mesh(
      data.create_input_iter(config, position), mesh, size=max(2, k))
  events = ("the TensorBoard events in "
            f"{paths.join(workdir, summary.EVENTS_DIR)}")
  with deadline(events):
    writer = summary.summary_writer(workdir) if lead else None
  t0, last = time.time(), start
  lr_fn = learning_rate_fn(config)
  bar = tqdm(total=total, initial=start, desc="train", unit="step",
             dynamic_ncols=True, mininterval=2.0, disable=not lead)
  skip = bool(config.training.skip_nonfinite)
  skipped = 0
  window = profile_window.ProfileWindow(config.training.profile_steps,
                                        workdir, lead)
  waited, flops = 0.0, 0.0  # seconds waiting for input; FLOPs per step
  peak = hardware_use.peak_tflops(jax.devices()[0].device_kind,
                                  float(config.training.peak_tflops))
  # The grid is also drawn at the end when sample_every is 0.
  evaluators = evaluators_common.from_config(config, model, schedule) + [
      (int(config.training.sample_every) or total,
       _SampleGrid(config, model, workdir, lead, deadline))]
  # The steps after which something happens: a call stops short of them.
  periods = [int(config.training.log_every),
             int(config.training.checkpoint_every)] + [
                 int(every) for every, _ in evaluators]

  def chunk(step):
    # How many steps the call from `step` runs (1 with steps_per_call 1).
    if k == 1:
      return 1
    nxt = min([total] + [(step // p + 1) * p for p in periods if p > 0])
    return min(k, nxt - step)

  def check_finite(done, metrics, n=1):
    # A step whose loss or gradient is not finite: stop before anything is
    # saved (or count it, when the config says to skip such updates).
    # `metrics` are those of the n steps up to `done` (one row each when
    # several steps run per call).
    nonlocal skipped
    finite = np.atleast_1d(jax.device_get(metrics["finite"]))[:n]
    if finite.all():
      return
    if skip:
      skipped += int((~finite).sum())
      return
    first = int(np.argmin(finite))
    loss = np.atleast_1d(jax.device_get(metrics["loss"]))[first]
    raise FloatingPointError(
        f"loss or gradient is not finite at step {done - n + 1 + first} "
        f"(loss {float(loss)}); stopped without saving it, the last "
        f"checkpoint is step {manager.latest_step()} (set "
        f"--config.training.skip_nonfinite=True to skip such steps)")

  saves = checkpoint_saves.Saves(manager, deadlines)

  def save(step):
    saves.save(step, state, position.to_json())

  pending = None  # the previous call's steps, checked once the next is out
  calls = 0
  flushed = time.time()
  try:
    try:
      while step < total:
        saves.check()  # a failed save stops the run here
        if multihost and manager.reached_preemption(calls):
          stop.requested = "preemption"
        calls += 1
        if stop.requested:
          if step == start:  # during start-up: no step has run
            if lead:
              progress.log_line(
                  bar, f"{stop.requested}: stopped before the first step; "
                  f"nothing new to save; run the same command to continue")
            break
          if pending is not None:
            check_finite(*pending)
          if manager.latest_step() != step:
            save(step)
          saves.check(wait=True)
          if lead:
            progress.log_line(
                bar, f"{stop.requested}: saved the checkpoint of step "
                f"{step} and stopped; run the same command to continue")
          break
        n = chunk(step)
        began = time.time()
        taken = [next(batches) for _ in range(n)]
        waited += time.time() - began
        position = taken[-1][1]
        if k == 1:
          args = (state, taken[0][0], schedule)
        else:  # the call's unused slots repeat the last batch
          args = (state, tuple(b for b, _ in taken) +
                  (taken[-1][0],) * (k - n), jnp.int32(n), schedule)
        if step == start:
          # Compiled here, for its time and FLOPs; with several processes,
          # compile first, then line them up: one still compiling when
          # another runs the step would time out gloo's context set-up.
          began = time.time()
          step_fn = step_fn.lower(*args).compile()
          compile_s = time.time() - began
          if lead:
            flops = hlo_costs.program_flops(step_fn.as_text())
            _log_compiled(bar, writer, start, compile_s, flops, peak)
          if multihost:
            parallel.host_barrier(f"train_step_compiled_{start}")
          t0, waited = time.time(), 0.0
        window.before(step, n)
        state, metrics = step_fn(*args)
        done = step + n
        if window.tracing:
          began = time.time()
          with deadline(paths.join(workdir, profile_window.PROFILE_DIR)):
            traced = window.after(done, state)
          if traced:  # (its writing is not counted in the rates)
            t0 += time.time() - began
            progress.log_line(bar, f"step {done}: wrote the profile of "
                              f"steps {config.training.profile_steps} to "
                              f"{traced}")
        if pending is not None:
          check_finite(*pending)
        pending = (done, metrics, n)
        if done % config.training.log_every == 0 or done == total:
          check_finite(done, metrics, n)
          m = {key: float(np.atleast_1d(v)[n - 1])
               for key, v in jax.device_get(metrics).items()}
          dt = time.time() - t0
          m["img_per_s"] = (done - last) * bs / max(dt, 1e-9)
          m["steps_per_s"] = (done - last) / max(dt, 1e-9)
          # The rate the update of step `done` used (optax counts from 0).
          m["learning_rate"] = float(lr_fn(done - 1))
          m["skipped_steps"] = float(skipped)
          if lead:
            m.update(hardware_use.rates(flops, done - last, dt, waited, peak))
          del m["finite"]
          t0, last, waited = time.time(), done, 0.0
          bar.set_postfix(loss=f"{m['loss']:.4f}",
                          img_s=f"{m['img_per_s']:.0f}")
          if writer is not None:
            for key, v in m.items():
              writer.add_scalar(f"train/{key}", v, done)
            if time.time() - flushed > summary.FLUSH_SECS:
              with deadline(events):
                writer.flush()
              flushed = time.time()
          if lead:  # one line per log_every steps on stdout, beside the bar
            progress.log_line(
                bar, f"step {done}: loss {m['loss']:.5f} grad_norm "
                f"{m['grad_norm']:.4f} lr {m['learning_rate']:.3g} "
                f"steps/s {m['steps_per_s']:.2f} img/s "
                f"{m['img_per_s']:.1f} TFLOP/s {m['tflops_per_device']:.3g}"
                + (f" MFU {m['mfu']:.1%}" if "mfu" in m else "") +
                f" input {m['input_wait']:.0%}")
        bar.update(n)
        step = done
        if done % config.training.checkpoint_every == 0 or done == total:
          check_finite(done, metrics, n)
          save(done)
        for every, evaluator in evaluators:
          if evaluators_common.due(every, done, total):
            if lead:
              progress.log_line(bar, f"step {done}: {evaluator.title} ...")
            results = dict(evaluator.run(state.ema_params, done))
            if writer is not None:
              for key, v in results.items():
                writer.add_scalar(f"eval/{key}", v, done)
            if lead:
              progress.log_line(bar,
                                f"step {done}: {evaluator.summary(results)}")
    finally:
      bar.close()
      failing = sys.exc_info()[1]
      closing = [saves.close]
      if not isinstance(failing, paths.StorageError):
        closing.insert(0, lambda: _within(deadline(paths.join(
            workdir, profile_window.PROFILE_DIR)), window.close))
      if writer is not None and not isinstance(failing, paths.StorageError):
        # (no writes once storage failed)
        closing.append(lambda: _within(deadline(events), writer.close))
      _close_all(closing, failing=failing is not None)
      deadlines.close()
  except paths.StorageError as e:
    latest = manager.latest_step()
    raise type(e)(
        f"{e}; training stopped at step {step}, the last checkpoint is "
        f"{'step ' + str(latest) if latest is not None else 'none'}: free "
        f"space or fix the storage, then run the same command to continue"
    ) from e
  return state


def _log_compiled(bar, writer, step: int, seconds: float, flops: float,
                  peak) -> None:
  """The train step's compile time and FLOPs, once, on the console and
  (``train/compile_s``) in TensorBoard."""
  on_peak = f", peak {peak:g} TFLOP/s" if peak else ""
  progress.log_line(bar, f"train step compiled in {seconds:.1f} s: "
                    f"{flops / 1e9:.4g} GFLOP per step and device{on_peak}")
  if writer is not None:
    writer.add_scalar("train/compile_s", seconds, step)


def _within(bound, fn):
  """``fn()`` inside the context ``bound``."""
  with bound:
    return fn()


def _close_all(closes, failing: bool) -> None:
  """Calls each of ``closes``; the first error is raised once all have
  run, unless an error is already on its way (``failing``), which it would
  hide."""
  first = None
  for close in closes:
    try:
      close()
    except Exception as e:  # pylint: disable=broad-except
      first = first or e
  if first is not None and not failing:
    raise first


class _StopOnSignal:
  """Turns SIGTERM (a TPU preemption notice, a scheduler's stop) and SIGINT
  into a request that the training loop honours between steps by saving a
  checkpoint of the current step and returning."""

  def __init__(self, sigterm: bool = True):
    self.requested = None
    self._previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT)[0 if sigterm else 1:]:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass

  def _handle(self, signum, frame):
    del frame
    self.requested = signal.Signals(signum).name

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
