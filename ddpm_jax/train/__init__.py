"""Training: the state (:mod:`.state`), one step and its update
(:mod:`.step`, Algorithm 1), and how the step computes its gradient
(:mod:`.grads`). The loop that runs it is :mod:`ddpm_jax.run.train_loop`.
"""

from ddpm_jax.train.grads import (AUTO_MICROBATCH_BYTES, microbatch_size,
                                  step_backward_plan, step_conv_backward,
                                  step_microbatch_size, step_platform)
from ddpm_jax.train.state import (TrainState, create_train_state,
                                  train_state_shapes)
from ddpm_jax.train.step import (apply_gradients, ema_update,
                                 make_train_step, train_step)
