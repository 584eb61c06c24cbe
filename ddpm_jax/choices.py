"""The names that flags and config fields choose between, in a module
light enough for an entry point's flags (``--help`` and the flag checks
run before JAX is imported)."""

# The fixed reverse-process variances (Sec. 3.2: beta-tilde_t or beta_t).
FIXED_VARIANCES = ("fixedsmall", "fixedlarge")
# How fewer sampling steps than T are chosen (ddpm_jax.samplers.spacing).
SPACINGS = ("leading", "trailing", "linspace", "uniform", "quadratic")
