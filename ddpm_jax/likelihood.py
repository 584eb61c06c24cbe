"""The pieces of the variational bound (eq. 5) in bits: Gaussian KL terms,
the discretized Gaussian decoder of Sec. 3.3 (eq. 13) and the prior term.

Everything is float32, pure and jittable, and reduces over all but the
batch axis as a mean (so the results are per dimension; divide by log 2
for bits, as :func:`mean_flat_bits` does).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

Array = jnp.ndarray

# The decoder's bins: pixel values {0..255} scaled to [-1, 1] are 2/255 apart.
BIN_HALF_WIDTH = 1.0 / 255.0
# The original code floors probabilities at this before taking logs.
LOG_FLOOR = 1e-12
# Pixels below -EDGE or above EDGE are the outermost bins, open to -inf/+inf.
EDGE = 0.999


def normal_kl(mean1: Array, log_var1: Array, mean2: Array,
              log_var2: Array) -> Array:
  """KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))), elementwise
  (the closed form behind every L_{t-1} term of eq. 5, in nats)."""
  return 0.5 * (-1.0 + log_var2 - log_var1 + jnp.exp(log_var1 - log_var2) +
                jnp.square(mean1 - mean2) * jnp.exp(-log_var2))


def approx_standard_normal_cdf(x: Array) -> Array:
  """Phi(x) through the tanh approximation the original code uses:
  0.5 (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) *
                               (x + 0.044715 * x * x * x)))


def discretized_gaussian_log_likelihood(x: Array, mean: Array,
                                        log_scale: Array,
                                        log_floor: float = LOG_FLOOR) -> Array:
  """log p(x) per element under the discretized decoder of eq. 13.

  ``x`` holds pixels in [-1, 1] on the 256-level grid; each pixel's
  probability is the mass of N(mean, exp(log_scale)^2) over its bin of
  width 2/255, with the first bin open to -inf and the last to +inf (the
  ``delta_-``/``delta_+`` of eq. 13). As in the original code the CDF is
  :func:`approx_standard_normal_cdf` and probabilities are floored at
  ``log_floor`` (the original's 1e-12; lucidrains' package uses 1e-15)
  before the log.
  """
  centered = x - mean
  inv_std = jnp.exp(-log_scale)
  cdf_plus = approx_standard_normal_cdf(inv_std * (centered + BIN_HALF_WIDTH))
  cdf_min = approx_standard_normal_cdf(inv_std * (centered - BIN_HALF_WIDTH))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, log_floor))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, log_floor))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, log_floor))
  return jnp.where(x < -EDGE, log_cdf_plus,
                   jnp.where(x > EDGE, log_one_minus_cdf_min, log_delta))


def mean_flat_bits(x: Array) -> Array:
  """Mean over all but the batch axis, converted from nats to bits."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim))) / math.log(2.0)
