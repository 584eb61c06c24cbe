"""How well a training run uses its hardware, for the training log: model
TFLOP/s per device from the compiled step's FLOPs
(:func:`ddpm_jax.hlo_costs.program_flops`), MFU against the device's peak,
and the share of the time spent waiting for input."""

from __future__ import annotations

from typing import Dict, Optional

# Dense bf16 peak TFLOP/s of one JAX device (vendor datasheets, without
# sparsity), by the name ``jax.Device.device_kind`` starts with, followed
# by its end or by a word of its own ("NVIDIA H100 80GB HBM3" is an H100,
# "NVIDIA L40" is not an L4, "TPU v5e" is not a v5p); the first match
# counts, so longer names come before their prefixes. TPU v2 and v3 show
# each core as a device (half a chip); v4 and later one device per chip.
PEAK_TFLOPS = (
    ("TPU v2", 22.5), ("TPU v3", 61.5), ("TPU v4 lite", 137.5),
    ("TPU v4", 275.0), ("TPU v5 lite", 197.0), ("TPU v5p", 459.0),
    ("TPU v5", 459.0), ("TPU v6 lite", 918.0),
    ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H100", 989.0), ("NVIDIA H200", 989.0), ("NVIDIA GH200", 989.0),
    ("NVIDIA B200", 2250.0), ("NVIDIA A100", 312.0), ("NVIDIA A10G", 70.0),
    ("NVIDIA L40S", 362.0), ("NVIDIA L40", 181.0), ("NVIDIA L4", 121.0),
)


def peak_tflops(device_kind: str, given: float = 0.0) -> Optional[float]:
  """The peak TFLOP/s that MFU is measured against: ``given``
  (``training.peak_tflops``) when positive, else the table's for
  ``device_kind``; None where neither knows (the CPU, an unlisted chip)."""
  if given > 0:
    return float(given)
  for name, peak in PEAK_TFLOPS:
    rest = device_kind[len(name):]
    if device_kind.startswith(name) and not rest[:1].isalnum():
      return peak
  return None


def rates(flops_per_step: float, steps: int, seconds: float,
          input_seconds: float, peak: Optional[float]) -> Dict[str, float]:
  """The log's hardware figures for ``steps`` steps in ``seconds``, of
  which ``input_seconds`` were spent waiting for batches:
  ``tflops_per_device`` (the model FLOPs of one device's part of a step,
  per second), ``mfu`` (that over ``peak``; absent without a peak) and
  ``input_wait`` (the fraction of the time spent waiting for input)."""
  seconds = max(seconds, 1e-9)
  out = {"tflops_per_device": flops_per_step * steps / seconds / 1e12,
         "input_wait": min(input_seconds / seconds, 1.0)}
  if peak:
    out["mfu"] = out["tflops_per_device"] / peak
  return out
