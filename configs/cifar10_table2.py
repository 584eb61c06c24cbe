"""The rows of Table 2 of Ho et al. 2020 (the CIFAR-10 ablation over the
mean parameterisation, the reverse variance and the objective), by name:

  python train.py --config configs/cifar10_table2.py:eps_fixed_kl --workdir w

  mu_learned_kl   mu~ prediction, learned diagonal Sigma, true bound L
  mu_fixed_kl     mu~ prediction, fixed isotropic Sigma, L
  mu_mse          mu~ prediction, ||mu~ - mu~_theta||^2
  eps_learned_kl  eps prediction, learned diagonal Sigma, L
  eps_fixed_kl    eps prediction, fixed isotropic Sigma, L
  eps_mse         eps prediction, L_simple (the paper's model; the default)
  x0_mse          x0 prediction, ||x0 - x0_theta||^2 (Sec. 4.2's remark)

mu~ prediction is the original code's 'xprev'; 'learned' is its log-variance
output. Everything else is the CIFAR-10 config.
"""

from configs import cifar10

ROWS = {
    # name: (prediction, learned_variance, loss)
    "mu_learned_kl": ("xprev", "learned", "kl"),
    "mu_fixed_kl": ("xprev", "", "kl"),
    "mu_mse": ("xprev", "", "mse"),
    "eps_learned_kl": ("eps", "learned", "kl"),
    "eps_fixed_kl": ("eps", "", "kl"),
    "eps_mse": ("eps", "", "mse"),
    "x0_mse": ("x0", "", "mse"),
}


def get_config(row=None):
  """The CIFAR-10 config with Table 2 row ``row`` (default ``eps_mse``)."""
  row = row or "eps_mse"
  if row not in ROWS:
    raise ValueError(f"unknown Table 2 row {row!r}: use "
                     f"configs/cifar10_table2.py:ROW with ROW one of "
                     f"{sorted(ROWS)}")
  config = cifar10.get_config()
  prediction, learned, loss = ROWS[row]
  config.diffusion.prediction = prediction
  config.diffusion.learned_variance = learned
  config.training.loss = loss
  return config
