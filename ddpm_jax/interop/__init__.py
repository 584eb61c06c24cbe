"""Moving models between ddpm-jax and the rest of the field.

* :mod:`~ddpm_jax.interop.diffusers_unet`: diffusers ``UNet2DModel``
  directories (``config.json`` + safetensors) to and from our U-Net.
* :mod:`~ddpm_jax.interop.diffusers_scheduler`: ``DDPMScheduler`` configs to
  and from our schedule and sampler settings.
* :mod:`~ddpm_jax.interop.tf_checkpoint`: the paper's original TensorFlow
  checkpoints (hojonathanho/diffusion).
* :mod:`~ddpm_jax.interop.sources`: one entry point that recognises any of
  these (or a train.py workdir) and returns a config and parameters.

Nothing here unpickles: weights come from safetensors or TF checkpoints,
and a pickled ``.bin`` is read only through ``torch.load(weights_only=True)``.
"""


class ConversionError(ValueError):
  """A model file or config that cannot be converted; the message is one
  line naming the file or field and what to do."""
