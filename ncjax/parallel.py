"""The device mesh, the sharding rules, and multi-host start-up.

Multi-host start-up (`maybe_initialize_distributed`) is at the end: JAX's own
multi-controller runtime, started from flags or a multi-process cluster environment.

The mesh has two axes: ``data`` (pure data parallelism: parameters replicated)
and ``fsdp`` (the batch is split over it too, and so are the parameters, along
their ``embed`` axis). Parameters are placed by logical-axis rules, never by
hand per layer: the models name their axes, this module maps names to mesh axes.

Axis types are ``Auto`` on purpose: with ``Explicit`` axes (the default of
``jax.make_mesh`` since 0.7) sharding becomes part of every array's type and
each op inside the model must say how its output is sharded. The models are
written sharding-agnostic; ``jit`` with ``in_shardings``/``out_shardings`` plus
XLA's propagation (GSPMD/Shardy) places the rest, which is what ``Auto`` gives.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ncjax.errors import DistributedError, MeshError

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")

# Logical parameter axes (the names the models use) → mesh axes.
LOGICAL_RULES = (
    ("embed", "fsdp"),
    ("mlp", None),
    ("heads", None),
    ("kv", None),
    ("vocab", None),
    ("classes", None),
    ("input", None),
    ("layers", None),
)


def mesh_shape(data: int, fsdp: int, device_count: int) -> tuple[int, int]:
    """Resolve a ``-1`` entry to the remaining devices and check the product."""
    shape = [data, fsdp]
    if shape.count(-1) > 1:
        raise MeshError(f"mesh: at most one of data, fsdp may be -1; got data={data}, fsdp={fsdp}")
    if any(s == 0 or s < -1 for s in shape):
        raise MeshError(f"mesh: sizes must be positive or -1; got data={data}, fsdp={fsdp}")
    fixed = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if device_count % fixed:
            raise MeshError(f"mesh: {device_count} devices are not divisible by the fixed axis size {fixed}")
        shape[shape.index(-1)] = device_count // fixed
    if shape[0] * shape[1] != device_count:
        raise MeshError(
            f"mesh: data×fsdp = {shape[0]}×{shape[1]} must equal the {device_count} devices; use -1 for one axis"
        )
    return shape[0], shape[1]


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """A ``(data, fsdp)`` mesh over ``devices`` (default: all, every host's)."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(data, fsdp, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def batch_sharding(mesh: Mesh, ndim: int, leading: int = 0) -> NamedSharding:
    """Shard the batch axis (after ``leading`` unsharded axes, e.g. seeds) over data and fsdp."""
    return NamedSharding(mesh, P(*([None] * leading), BATCH_AXES, *([None] * (ndim - leading - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_shardings(logical_specs, mesh: Mesh, leading: int = 0):
    """NamedShardings of a parameter tree from its logical specs (``leading`` unsharded axes first).

    A parameter whose ``embed`` size does not divide the fsdp axis stays replicated
    along it rather than failing: small layers are not worth splitting.
    """
    def to_sharding(spec):
        mesh_spec = nn.logical_to_mesh_axes(spec, LOGICAL_RULES)
        return NamedSharding(mesh, P(*([None] * leading), *mesh_spec))

    return jax.tree.map(to_sharding, logical_specs, is_leaf=lambda x: isinstance(x, P))


def fit_shardings(shardings, shapes):
    """Drop mesh axes from dimensions they do not divide (keeps odd sizes working)."""
    def fit(sharding, shape):
        spec = list(sharding.spec) + [None] * (len(shape.shape) - len(sharding.spec))
        for i, axis in enumerate(spec):
            if axis is not None:
                names = axis if isinstance(axis, tuple) else (axis,)
                size = int(np.prod([sharding.mesh.shape[n] for n in names]))
                if shape.shape[i] % size:
                    spec[i] = None
        return NamedSharding(sharding.mesh, P(*spec))

    return jax.tree.map(fit, shardings, shapes)


# Environments that describe more than one process of one job. Each entry says how
# many processes the environment announces (None: it says nothing about the count).
def _cluster_processes(env) -> tuple[str, int] | None:
    """(name, process count) of the multi-process cluster this process belongs to, if any.

    Deliberately conservative: a variable that is also set for a single process
    (a single-host TPU VM, an ``salloc`` shell, a one-task SLURM job, the batch
    script of ``sbatch`` before ``srun``) must not start the distributed runtime,
    which would wait for peers that never come.
    """
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS", int(env.get("JAX_NUM_PROCESSES", "0") or 0)
    # SLURM: only inside a job *step* (srun sets SLURM_STEP_NODELIST and SLURM_PROCID).
    if env.get("SLURM_STEP_NODELIST") and env.get("SLURM_PROCID") is not None:
        tasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
        if tasks > 1:
            return "slurm", tasks
    # Open MPI (mpirun -np N): jax's ompi cluster reads these.
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "ompi", int(env["OMPI_COMM_WORLD_SIZE"])
    # TPU pods (GKE sets the worker list in the environment; a single host lists one name).
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:
        return "tpu", len(hosts)
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):  # multislice TPU
        return "megascale", 0
    return None


def maybe_initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None, mode: str = "auto", env=None) -> bool:
    """Start JAX's multi-controller runtime (``jax.distributed``) when the job has several processes.

    ``mode``:
      - ``"auto"`` (default): explicit flags win (``coordinator`` with ``num_processes`` and
        ``process_id``); otherwise a multi-process cluster environment (``JAX_COORDINATOR_ADDRESS``,
        a SLURM step with more than one task, ``mpirun``, a GKE TPU slice with several workers,
        multislice) is left to ``jax.distributed.initialize()`` to read. A single plain process,
        a single-host TPU VM, an ``salloc`` shell or a one-task SLURM job starts nothing.
      - ``"on"``: always ``jax.distributed.initialize()`` (with the flags given, the rest
        auto-detected by jax: Cloud TPU VM pods read the metadata server; this is what
        ``launch/tpu_vm.sh`` uses on every worker of a pod slice).
      - ``"off"``: never.

    CPU collectives (gloo) are switched on first, so multi-process runs on CPU hosts work too;
    the setting only concerns the CPU backend and is harmless on GPU and TPU.
    Returns whether it initialised (``False`` also when it already was).
    """
    env = os.environ if env is None else env
    if mode not in ("auto", "on", "off"):
        raise DistributedError(f"--distributed must be auto, on or off; got {mode!r}")
    if mode == "off":
        if coordinator:
            raise DistributedError("--coordinator_address was given with --distributed=off")
        return False
    if jax.distributed.is_initialized():
        return False
    if coordinator or num_processes is not None or process_id is not None:
        missing = [name for name, value in (("--coordinator_address", coordinator),
                                            ("--num_processes", num_processes),
                                            ("--process_id", process_id)) if value is None]
        if missing and mode != "on":
            raise DistributedError(
                f"multi-host: give --coordinator_address, --num_processes and --process_id together "
                f"(missing {', '.join(missing)}), or none of them to read the cluster's environment")
        if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
            raise DistributedError(f"--process_id={process_id} must be in 0..{num_processes - 1}")
        if coordinator and ":" not in coordinator:
            raise DistributedError(f"--coordinator_address={coordinator!r} must be host:port")
    elif mode == "auto" and _cluster_processes(env) is None:
        return False
    _enable_cpu_collectives()
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True


def _enable_cpu_collectives() -> None:
    """Cross-process collectives on the CPU backend (gloo); must precede the first backend use."""
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
