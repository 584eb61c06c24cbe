"""The precision policy: model.dtype='bfloat16' runs convolutions, dense
layers and attention in bf16 while parameters, optimizer state, group
norms, softmax, schedule math, the loss and the gradient norm stay fp32."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import from_config, train, validation
from ddpm_jax.models.unet import eps_fn
from tests.tiny_configs import tiny_digits_config


def tiny(dtype):
  config = tiny_digits_config(num_timesteps=20, batch_size=4)
  config.model.dtype = dtype
  return config


def setup(dtype):
  config = tiny(dtype)
  model, tx = from_config.make_model(config), from_config.make_optimizer(config)
  return config, model, tx, train.create_train_state(config, model, tx)


def dtypes_of(tree):
  return {x.dtype for x in jax.tree_util.tree_leaves(tree)}


def test_bf16_computes_in_bf16_and_keeps_fp32_where_it_matters():
  config, model, _, state = setup("bfloat16")
  assert dtypes_of(state.params) == {jnp.dtype(jnp.float32)}
  assert dtypes_of(state.opt_state) <= {jnp.dtype(jnp.float32),
                                        jnp.dtype(jnp.int32)}
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  t = jnp.array([3, 17])
  out, inter = jax.jit(lambda p: model.apply(
      {"params": p}, x, t, capture_intermediates=True, mutable=True))(
          state.params)
  assert out.dtype == jnp.float32
  kinds = {}
  for path, value in jax.tree_util.tree_flatten_with_path(
      inter["intermediates"])[0]:
    names = [getattr(p, "key", None) for p in path]
    layer = names[names.index("__call__") - 1] if len(names) > 2 else "unet"
    kinds.setdefault(layer, set()).add(value.dtype)
  # Every conv and attention projection returns bf16; every norm fp32.
  for layer in ("conv1", "conv2", "conv_in", "q", "k", "v", "proj_out"):
    assert kinds[layer] == {jnp.dtype(jnp.bfloat16)}, (layer, kinds[layer])
  for layer in ("norm1", "norm2", "norm", "norm_out"):
    assert kinds[layer] == {jnp.dtype(jnp.float32)}, (layer, kinds[layer])
  # The softmax of the attention weights runs in fp32.
  jaxpr = str(jax.make_jaxpr(lambda p: model.apply({"params": p}, x, t))(
      state.params))
  assert "reduce_max" in jaxpr
  for line in jaxpr.splitlines():
    if "reduce_max" in line:
      assert "f32[" in line.split("=")[0], line


@pytest.mark.slow
def test_bf16_output_and_step_close_to_fp32():
  _, model32, tx, state = setup("float32")
  config, model16, _, _ = setup("bfloat16")
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  t = jnp.array([0, 5, 10, 19])
  # Random weights make a non-trivial function (the zero-init output conv
  # would make both outputs 0).
  leaves, treedef = jax.tree_util.tree_flatten(state.params)
  keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
  params = jax.tree_util.tree_unflatten(treedef, [
      l + 0.05 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
  a = jax.jit(eps_fn(model32))(params, x, t)  # eager: many seconds more
  b = jax.jit(eps_fn(model16))(params, x, t)
  rel = float(jnp.linalg.norm(b - a) / jnp.linalg.norm(a))
  assert 1e-4 < rel < 3e-2, rel  # bf16 (8-bit mantissa) rounding, not fp32

  schedule = from_config.make_schedule(config)
  batch = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 1),
                             minval=-1, maxval=1)
  outs = {}
  for name, model in (("fp32", model32), ("bf16", model16)):
    step = jax.jit(functools.partial(
        train.train_step, apply_fn=eps_fn(model), tx=tx, ema_decay=0.9))
    s = state.replace(params=params, ema_params=params,
                      opt_state=tx.init(params))
    new, metrics = step(s, batch, schedule)
    assert metrics["loss"].dtype == jnp.float32
    assert metrics["grad_norm"].dtype == jnp.float32
    assert dtypes_of(new.params) == {jnp.dtype(jnp.float32)}
    assert bool(metrics["finite"])
    outs[name] = metrics
  for k in ("loss", "grad_norm"):
    np.testing.assert_allclose(outs["bf16"][k], outs["fp32"][k], rtol=3e-2)


def test_dtype_is_validated():
  config = tiny("float16")
  with pytest.raises(from_config.ConfigError, match="model.dtype"):
    validation.validate_config(config)


@pytest.mark.slow
def test_a_float32_model_samples_in_bf16_with_dtype():
  # sample.py / evaluate.py --dtype bfloat16 on a float32 model: the U-Net
  # computes in bf16, the samples stay near the float32 ones.
  from ddpm_jax.run import sampling
  from ddpm_jax.samplers import generate
  config, model32, _, state = setup("float32")
  leaves, treedef = jax.tree_util.tree_flatten(state.params)
  keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
  params = jax.tree_util.tree_unflatten(treedef, [
      l + 0.05 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
  config.sampling.steps = 5
  a = generate.generate(config, model32, params, 4, 4, seed=0)
  sampling.set_compute_dtype(config, "bfloat16")
  model16 = from_config.make_model(config)
  assert model16.dtype == "bfloat16"
  b = generate.generate(config, model16, params, 4, 4, seed=0)
  assert b.dtype == np.float32
  diff = np.abs(b - a)
  assert 0 < diff.max() and diff.mean() < 0.05, (diff.max(), diff.mean())
  with pytest.raises(ValueError, match="--dtype must be one of"):
    sampling.set_compute_dtype(config, "float16")
