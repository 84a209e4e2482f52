"""Data parallelism over devices and processes with `jax.sharding`: the batch split, the rest replicated.

`fit` uses it by itself when JAX sees more than one device (several GPUs, several processes,
or a CPU run under XLA_FLAGS=--xla_force_host_platform_device_count=N) and the batch divides
evenly: the train state, hyperparameters and the uint8 data are replicated on every device,
each step's batch is constrained to be split along a 1-D mesh axis "data", and XLA's
partitioner inserts the gradient all-reduce. The numbers are those of one device up to the
order of float sums.

Several processes (one per host or per GPU): `initialize()` joins them before anything
touches JAX. It reads Slurm's environment (srun with several tasks) or JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID. `jax.devices()` then lists every process's devices and
the same mesh spans them; every process loads the same data and config, so the replicated
inputs are identical everywhere, as `jax.device_put` onto a multi-process sharding requires.
Only process 0 writes the run record (aeflax.run). See docs/scale.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    import jax
    from jax.sharding import Mesh, NamedSharding

AXIS = "data"  # JAX is imported by each function: aeflax.run asks launched_as_several() before it


def data_mesh(batch_size: int, devices: Optional[Sequence[jax.Device]] = None) -> Optional[Mesh]:
    """A 1-D mesh over the devices, or None when one device (or an uneven split) is all there is."""
    import jax
    from jax.sharding import Mesh

    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < 2 or batch_size % len(devices):
        return None
    return Mesh(np.array(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec())


def batched(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split across the mesh."""
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicate(tree: Any, mesh: Optional[Mesh]) -> Any:
    import jax

    if mesh is None:
        return jax.device_put(tree)
    if jax.process_count() > 1:  # via host memory: no array moves between processes
        tree = jax.tree.map(np.asarray, tree)
    return jax.device_put(tree, replicated(mesh))


# --- several processes -------------------------------------------------------------------

def launched_as_several() -> bool:
    """True when this process is one of several of one run (read from the environment only,
    so that a single process does not import JAX for it)."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1  # srun started several tasks


def initialize() -> None:
    """Join the other processes of the run (once, before any JAX computation); no-op alone.

    JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID
    name them; under `srun` JAX reads Slurm's variables itself. On CPUs the processes
    exchange gradients through gloo (JAX's default CPU collectives).
    """
    import jax

    if not launched_as_several() or jax.distributed.is_initialized():
        return
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"],
                                   int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"]))
    else:
        jax.distributed.initialize()  # Slurm: coordinator, process count and id from SLURM_*


def is_primary() -> bool:
    """Process 0 writes the record, the figures and the W&B run; the others only train."""
    import jax

    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on any (a stop request must be agreed, or the
    processes would wait for each other's collectives forever)."""
    import jax

    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([flag], dtype=np.int32))))


def local_copy(tree):
    """A replicated multi-process tree as this process's own arrays (process 0 evaluates alone)."""
    import jax

    if jax.process_count() == 1:
        return tree
    return jax.device_put(jax.device_get(tree), jax.local_devices()[0])


def from_primary(code: int) -> int:
    """Process 0's `code` on every process (what process 0 decided about the run directory)."""
    import jax

    if jax.process_count() == 1:
        return code
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(code)))
