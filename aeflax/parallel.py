"""Data parallelism over devices with `jax.sharding`: the batch split, everything else replicated.

`fit` uses it by itself when the process sees more than one device (several GPUs, or a
CPU run under XLA_FLAGS=--xla_force_host_platform_device_count=N) and the batch divides
evenly: the train state, hyperparameters and the uint8 data are replicated on every
device, each step's batch is constrained to be split along a 1-D mesh axis "data", and
XLA's partitioner inserts the gradient all-reduce. The numbers are those of one device up
to the order of float sums.

Several hosts (Slurm): call `initialize()` first in every process (it runs
`jax.distributed.initialize()`, which reads Slurm's environment); `jax.devices()` then
lists every host's devices and the same mesh spans them. Every process loads the same
data and the same config, so the replicated inputs are identical everywhere, as
`jax.device_put` onto a multi-host sharding requires. See docs/performance.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"


def data_mesh(batch_size: int, devices: Optional[Sequence[jax.Device]] = None) -> Optional[Mesh]:
    """A 1-D mesh over the devices, or None when one device (or an uneven split) is all there is."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < 2 or batch_size % len(devices):
        return None
    return Mesh(np.array(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batched(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split across the mesh."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicate(tree: Any, mesh: Optional[Mesh]) -> Any:
    return jax.device_put(tree) if mesh is None else jax.device_put(tree, replicated(mesh))


def initialize() -> None:
    """Join a multi-host job (Slurm sets what `jax.distributed.initialize` reads); no-op alone."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()
