"""Training the noise-aware classifier p_phi(y | x_t, t) that classifier
guidance differentiates: cross-entropy on x_t ~ q(x_t | x_0) at uniform t,
with the diffusion model's schedule. ``train_classifier.py`` runs it."""

from __future__ import annotations

import functools
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ddpm_jax import checkpoints, compilation, data, from_config, paths
from ddpm_jax import progress
from ddpm_jax.diffusion import q_sample
from ddpm_jax.models.classifier import (NoisyClassifier,
                                        classifier_from_config,
                                        init_classifier, log_prob_fn)
from ddpm_jax.schedules import DiffusionSchedule


def classifier_loss(params: Any, classifier: NoisyClassifier,
                    schedule: DiffusionSchedule, x0: jnp.ndarray,
                    labels: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
  """Mean cross-entropy of the labels given x_t, t ~ U[0, T), eps ~ N(0, I)
  from ``key``."""
  key_t, key_n, key_d = jax.random.split(key, 3)
  t = jax.random.randint(key_t, (x0.shape[0],), 0, schedule.num_timesteps)
  x_t = q_sample(schedule, x0, t, jax.random.normal(key_n, x0.shape))
  return -jnp.mean(log_prob_fn(classifier)(params, x_t, t, labels, key_d))


@functools.partial(jax.jit, static_argnames=("classifier", "tx"))
def classifier_step(params, opt_state, schedule, batch, key, *, classifier,
                    tx) -> Tuple[Any, Any, jnp.ndarray]:
  """One Adam step of :func:`classifier_loss`."""
  loss, grads = jax.value_and_grad(classifier_loss)(
      params, classifier, schedule, batch["image"], batch["label"], key)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


@functools.partial(jax.jit, static_argnames=("classifier",))
def accuracy_at(params, classifier, schedule, x0, labels, t, key):
  """Fraction of ``x0`` classified right after noising to index ``t``."""
  t_vec = jnp.full((x0.shape[0],), t, jnp.int32)
  x_t = q_sample(schedule, x0, t_vec, jax.random.normal(key, x0.shape))
  logits = classifier.apply({"params": params}, x_t, t_vec)
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def held_out_accuracy(config, classifier, params, schedule
                      ) -> Dict[int, float]:
  """Accuracy on the digits test split at a few timesteps."""
  x0 = data.digits_images("test", config.data.image_size)
  labels = data.digits_labels("test")
  num_t = schedule.num_timesteps
  return {int(t): float(accuracy_at(params, classifier, schedule, x0, labels,
                                    int(t), jax.random.PRNGKey(t)))
          for t in sorted({0, num_t // 4, num_t // 2, 3 * num_t // 4,
                           num_t - 1})}


def train_classifier(config: ml_collections.ConfigDict, workdir: str
                     ) -> Dict[int, float]:
  """Trains the classifier of ``config`` and saves its params and config in
  ``workdir``; returns the held-out accuracy at a few t."""
  if config.data.name != "digits":
    raise data.DataError("the guidance classifier trains on digits only so "
                         "far: set data.name='digits'")
  out = paths.join(paths.absolute(workdir), checkpoints.CLASSIFIER_DIR)
  if paths.exists(out):
    raise FileExistsError(f"{out} exists: give a new --workdir")
  classifier = classifier_from_config(config.classifier)
  schedule = from_config.make_schedule(config)
  tx = optax.adam(config.optim.learning_rate)
  params = compilation.jit_once(lambda: init_classifier(
      classifier, config.data.image_size, config.data.channels,
      config.seed))()
  opt_state = tx.init(params)
  batches = data.create_input_iter(
      config, num_classes=int(config.classifier.num_classes))
  key = jax.random.PRNGKey(config.seed)
  bar = progress.bar(range(int(config.training.num_steps)),
                     desc="train classifier", unit="step")
  for step in bar:
    batch, _ = next(batches)
    params, opt_state, loss = classifier_step(
        params, opt_state, schedule, jax.tree_util.tree_map(jnp.asarray, batch),
        jax.random.fold_in(key, step), classifier=classifier, tx=tx)
    if (step + 1) % config.training.log_every == 0:
      progress.log_line(bar, f"step {step + 1}: loss {float(loss):.4f}")
  checkpoints.save_classifier(workdir, config, params)
  return held_out_accuracy(config, classifier, params, schedule)
