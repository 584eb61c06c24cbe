"""Which weights a workdir hands out: interop.sources.load_workdir (the path
of sample.py, evaluate.py and the export) returns the EMA parameters when
asked and the raw ones with use_ema=False, read from a checkpoint where the
two differ in every leaf, and reads nothing else of it."""

import jax
import numpy as np
import optax
import pytest

from ddpm_jax import checkpoints, from_config, train
from ddpm_jax.interop import sources
from tests.tiny_configs import tiny_digits_config


def test_load_workdir_returns_ema_or_raw_params(tmp_path):
  config = tiny_digits_config(num_timesteps=10, batch_size=4)
  config.model.ch_mult = (1,)
  config.model.attn_resolutions = ()
  model, tx = from_config.make_model(config), from_config.make_optimizer(config)
  state = train.create_train_state(config, model, tx)
  raw = jax.tree_util.tree_map(lambda p: p + 1.0, state.params)
  ema = jax.tree_util.tree_map(lambda p: p - 2.0, state.params)
  # The optimizer state is not read: saved here as another optimizer's,
  # which a restore of the whole state onto the config's would refuse.
  state = state.replace(step=state.step + 3, params=raw, ema_params=ema,
                        opt_state=optax.sgd(0.1, momentum=0.9).init(raw))
  workdir = str(tmp_path / "run")
  manager = checkpoints.checkpoint_manager(workdir)
  checkpoints.save(manager, 3, state)
  manager.wait_until_finished()
  manager.close()
  checkpoints.write_config(workdir, config)

  for use_ema, want in ((True, ema), (False, raw)):
    cfg, params, step = sources.load_workdir(workdir, use_ema)
    assert step == 3 and cfg.model.ch == config.model.ch
    got, want = jax.tree_util.tree_leaves(params), \
        jax.tree_util.tree_leaves(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  with pytest.raises(FileNotFoundError, match="no config.json"):
    sources.load_workdir(str(tmp_path / "nothing"))
