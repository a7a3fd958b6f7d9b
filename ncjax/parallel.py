"""The device mesh, the sharding rules, and multi-host start-up.

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
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

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


class MeshError(ValueError):
    """The requested mesh does not fit the devices (a user error: exit status 2)."""


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


def maybe_initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
    """Start JAX's multi-controller runtime when the environment asks for it.

    Explicit flags win; otherwise the cluster's own environment (TPU VM pods,
    SLURM, or ``JAX_COORDINATOR_ADDRESS``) is left to ``jax.distributed`` to read.
    A single plain process starts nothing. Returns whether it initialised.
    """
    if coordinator:
        jax.distributed.initialize(coordinator, num_processes, process_id)
        return True
    cluster_env = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")
    if any(os.environ.get(name) for name in cluster_env) and int(os.environ.get("SLURM_NTASKS", "2")) > 1:
        jax.distributed.initialize()
        return True
    return False
