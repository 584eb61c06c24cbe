"""Devices: a ``Mesh`` over every device of every process, and the
``NamedSharding``s of the train state and the batch.

The batch is split over the mesh's ``data`` axis. Parameters, their EMA and
the optimizer state are replicated, or with ``fsdp`` split over the same
axis (each array along its largest dimension that the device count divides;
small arrays stay replicated). XLA inserts the collectives, so the step's
numerics do not depend on the device count.
"""

from __future__ import annotations

import collections
import os
from typing import Any, Iterator, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
# Arrays smaller than this stay replicated under FSDP: splitting a bias or
# a norm scale costs more in collectives than it saves in memory.
FSDP_MIN_SIZE = 2**14
# At most this many CPU devices from use_cpu_cores (measured up to 2 cores;
# beyond 8 the per-device batches of the usual 64-128 get small).
MAX_CPU_DEVICES = 8
_DEVICE_COUNT_FLAG = "xla_force_host_platform_device_count"


def cpu_device_count(cores: int) -> int:
  """The CPU devices :func:`use_cpu_cores` asks for on ``cores`` cores: the
  largest power of two <= min(cores, MAX_CPU_DEVICES), so that the usual
  power-of-two batch sizes divide over them."""
  n = 1
  while n * 2 <= min(cores, MAX_CPU_DEVICES):
    n *= 2
  return n


def usable_cores() -> int:
  """The CPU cores this process may run on (its affinity mask on Linux)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def use_cpu_cores() -> Optional[int]:
  """Makes JAX's CPU backend one device per core (:func:`cpu_device_count`)
  and returns that count; None, changing nothing, where the count is
  already chosen (``XLA_FLAGS=--xla_force_host_platform_device_count=N``,
  ``JAX_NUM_CPU_DEVICES`` or ``jax_num_cpu_devices``). Call it before JAX
  initialises a backend; the entry points do.

  XLA's CPU backend runs the U-Net's small convolutions on about one core
  (2 cores: 1.2 cores busy); split over one device per core, the batch
  keeps every core busy: the digits U-Net's forward pass runs 1.8-1.9x
  faster on 2 cores (docs/benchmarks.md). It only shapes the CPU backend:
  on GPU and TPU hosts the accelerator stays the default backend.
  """
  if (_DEVICE_COUNT_FLAG in os.environ.get("XLA_FLAGS", "")
      or os.environ.get("JAX_NUM_CPU_DEVICES")
      or jax.config.jax_num_cpu_devices >= 0):
    return None
  n = cpu_device_count(usable_cores())
  jax.config.update("jax_num_cpu_devices", n)
  return n


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A one-axis (``data``) mesh over ``devices`` (default: all devices of
  all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())


def on_mesh(tree: Any, mesh: Mesh) -> Any:
  """``tree``'s arrays placed on every device of ``mesh``: arrays already
  spread over exactly those devices stay as they are (replicated or
  sharded); host arrays and arrays on other devices (a checkpoint restored
  onto one device, say) are replicated. With several processes (each
  holding the same values) every process places its own devices' copies:
  an array on one process's device cannot be sent to another's."""
  rep, devices = replicated(mesh), set(mesh.devices.flat)

  def put(x):
    if isinstance(x, jax.Array) and set(x.sharding.device_set) == devices:
      return x
    if jax.process_count() > 1:
      host = np.asarray(x)
      return jax.make_array_from_callback(host.shape, rep,
                                          lambda index: host[index])
    return jax.device_put(x, rep)

  return jax.tree_util.tree_map(put, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The leading (batch) axis split over ``data``."""
  return NamedSharding(mesh, P(DATA_AXIS))


def fsdp_spec(shape: Sequence[int], num_shards: int,
              min_size: int = FSDP_MIN_SIZE) -> P:
  """The PartitionSpec splitting an array of ``shape`` over ``data`` along
  its largest divisible dimension; replicated if none or if it is small."""
  if num_shards <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % num_shards == 0:
      spec = [None] * len(shape)
      spec[dim] = DATA_AXIS
      return P(*spec)
  return P()


def state_sharding(state: Any, mesh: Mesh, fsdp: bool = False) -> Any:
  """A pytree of ``NamedSharding`` matching ``state`` (arrays or
  ShapeDtypeStructs): replicated, or FSDP-split with ``fsdp``."""
  size = mesh.shape[DATA_AXIS]

  def one(x):
    shape = getattr(x, "shape", ())
    if not fsdp:
      return replicated(mesh)
    return NamedSharding(mesh, fsdp_spec(shape, size))

  return jax.tree_util.tree_map(one, state)


def global_batch(local: Any, mesh: Mesh) -> Any:
  """This process's rows of the global batch (an array or a pytree of them,
  such as ``{'image', 'label'}``) -> global ``jax.Array``s split over
  ``data`` (``jax.make_array_from_process_local_data``)."""
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding,
                                                       np.asarray(x)), local)


def prefetch_to_mesh(batches: Iterator[Tuple[np.ndarray, Any]], mesh: Mesh,
                     size: int = 2) -> Iterator[Tuple[jax.Array, Any]]:
  """(local batch, tag) pairs -> (global batch on ``mesh``, tag) pairs,
  with ``size`` batches already on their way to the devices (the copies
  are asynchronous, so the host's next batch overlaps the current step)."""
  queue = collections.deque()
  for local, tag in batches:
    queue.append((global_batch(local, mesh), tag))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def host_barrier(name: str, timeout_s: int = 1800) -> None:
  """Waits until every process reaches ``name``. A barrier of JAX's
  coordination service, not a collective: it sets up no gloo/NCCL context,
  so it can line processes up *before* the first collective (gloo gives a
  new context only 30 s for every process to join). No-op on one process."""
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  distributed.global_state.client.wait_at_barrier(name, timeout_s * 1000)
