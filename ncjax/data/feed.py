"""How training batches reach the train step: resident on the device, or streamed from the host.

The order is a function of ``(seed, epoch)`` alone (:func:`epoch_order`), computed
with ``jax.random`` so that both feeds, every device count, every process count and
every resume point see the same batches. Global batch ``k`` of an epoch holds
positions ``[k·B, (k+1)·B)`` of that epoch's permutation; the ragged remainder of an
epoch is dropped.

- :class:`DeviceFeed` puts the training arrays on the mesh once (replicated) and
  gathers each step's batch inside the compiled block of steps: the host never
  touches a batch. The current epoch's permutation rides along the block's carry and
  is recomputed on the device at the first step of every epoch.
- :class:`HostFeed` is for data too large to replicate on every device: the host
  gathers a block's batches (same order), each process its own slice of every
  global batch, and the next block is prepared in a thread while the current one
  computes.

:func:`choose` picks one by ``data.placement`` (``auto``: the device when the
training arrays take at most :data:`DEVICE_FRACTION` of one device's memory, or
:data:`CPU_DEVICE_BYTES` on a CPU backend, whose "device" memory is host memory).
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ncjax.data.dataset import Dataset
from ncjax.errors import ConfigError, DataError

PLACEMENTS = ("auto", "device", "host")
DEVICE_FRACTION = 0.25  # of one accelerator's memory: the rest is for parameters, activations, XLA
CPU_DEVICE_BYTES = 4 << 30


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch: the ragged remainder is dropped."""
    return n // batch_size


def epoch_order(seed: jax.Array, epoch: jax.Array, n: int) -> jax.Array:
    """The permutation of ``range(n)`` that epoch ``epoch`` of seed ``seed`` visits (int32 [n])."""
    key = jax.random.fold_in(jax.random.key(jnp.asarray(seed, jnp.uint32)), jnp.asarray(epoch, jnp.uint32))
    return jax.random.permutation(key, n).astype(jnp.int32)


def _member_orders(seeds: jax.Array, epoch: jax.Array, n: int) -> jax.Array:
    return jax.vmap(epoch_order, in_axes=(0, None, None))(seeds, epoch, n)


def _check(dataset: Dataset, batch_size: int, process_count: int) -> None:
    if steps_per_epoch(len(dataset.train_y), batch_size) == 0:
        raise DataError(f"train.batch_size={batch_size} is larger than the {len(dataset.train_y)} training examples")
    if batch_size % process_count:
        raise ConfigError(f"train.batch_size={batch_size} must be a multiple of the {process_count} processes")


class DeviceFeed:
    """The training set replicated on every device of ``mesh``; batches gathered inside the program."""

    on_device = True

    def __init__(self, dataset: Dataset, batch_size: int, mesh: jax.sharding.Mesh):
        _check(dataset, batch_size, jax.process_count())
        self.n, self.batch_size = len(dataset.train_y), batch_size
        self.steps_per_epoch = steps_per_epoch(self.n, batch_size)
        replicated = NamedSharding(mesh, P())
        self.arrays = tuple(
            jax.make_array_from_callback(a.shape, replicated, lambda index, a=a: a[index])
            for a in (dataset.train_x, dataset.train_y))
        self._carry = jax.jit(lambda seeds, epoch: (_member_orders(seeds, epoch, self.n), epoch),
                              out_shardings=replicated)

    def carry(self, seeds: jax.Array, step: int) -> tuple[jax.Array, jax.Array]:
        """What the block's scan carries: the order of the epoch that ``step`` falls in [M, n], and that epoch."""
        return self._carry(seeds, np.int32(step // self.steps_per_epoch))

    def block_inputs(self, seeds, start: int, length: int):
        """Nothing to send: the data is already resident."""
        return ()

    def batch(self, arrays, carry, block_inputs, seeds, step, index_in_block):
        """(x [M, B, ...], y [M, B]) of global step ``step`` (traced), and the updated carry."""
        del block_inputs, index_in_block
        order, epoch = carry
        step_epoch, k = step // self.steps_per_epoch, step % self.steps_per_epoch
        order = jax.lax.cond(step_epoch != epoch, lambda: _member_orders(seeds, step_epoch, self.n), lambda: order)
        idx = jax.lax.dynamic_slice_in_dim(order, k * self.batch_size, self.batch_size, axis=1)  # [M, B]
        x, y = arrays
        return (x[idx], y[idx]), (order, step_epoch)


class HostFeed:
    """Batches gathered on the host (same order as :class:`DeviceFeed`), one block ahead in a thread."""

    on_device = False

    def __init__(self, dataset: Dataset, batch_size: int, mesh: jax.sharding.Mesh):
        processes = jax.process_count()
        _check(dataset, batch_size, processes)
        self.x, self.y = dataset.train_x, dataset.train_y
        self.n, self.batch_size = len(self.y), batch_size
        self.steps_per_epoch = steps_per_epoch(self.n, batch_size)
        self.mesh = mesh
        local = batch_size // processes
        self._local = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
        self._order = jax.jit(_member_orders, static_argnums=2)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._ahead: tuple[tuple[int, int], concurrent.futures.Future] | None = None
        self.arrays = ()

    def carry(self, seeds, step: int):
        return ()

    def _gather(self, seeds: np.ndarray, start: int, length: int):
        """This process's part of the batches of steps [start, start + length): x [T, M, b, ...], y [T, M, b]."""
        epochs = range(start // self.steps_per_epoch, (start + length - 1) // self.steps_per_epoch + 1)
        orders = {e: np.asarray(self._order(jnp.asarray(seeds), jnp.int32(e), self.n)) for e in epochs}
        rows = [(s % self.steps_per_epoch) * self.batch_size for s in range(start, start + length)]
        idx = np.stack([orders[s // self.steps_per_epoch][:, row + self._local.start: row + self._local.stop]
                        for s, row in zip(range(start, start + length), rows)])  # [T, M, b]
        return self.x[idx], self.y[idx]

    def block_inputs(self, seeds, start: int, length: int):
        """The block's batches as global arrays sharded over the batch axis; prefetches the next block."""
        seeds = np.asarray(seeds)
        key = (start, length)
        if self._ahead is not None and self._ahead[0] == key:
            x, y = self._ahead[1].result()
        else:
            x, y = self._gather(seeds, start, length)
        self._ahead = (key_next := (start + length, length),
                       self._pool.submit(self._gather, seeds, *key_next))
        return tuple(self._to_global(a) for a in (x, y))

    def _to_global(self, local: np.ndarray) -> jax.Array:
        spec = P(None, None, ("data", "fsdp"), *([None] * (local.ndim - 3)))
        shape = (local.shape[0], local.shape[1], self.batch_size, *local.shape[3:])
        return jax.make_array_from_process_local_data(NamedSharding(self.mesh, spec), local, shape)

    def batch(self, arrays, carry, block_inputs, seeds, step, index_in_block):
        x, y = block_inputs
        return (x[index_in_block], y[index_in_block]), carry

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


Feed = DeviceFeed | HostFeed


def device_budget(device: Any) -> int:
    """Bytes of training data :func:`choose` puts on ``device`` under ``placement='auto'``."""
    if device.platform == "cpu":
        return CPU_DEVICE_BYTES
    stats = device.memory_stats() or {}
    if "bytes_limit" not in stats:
        return CPU_DEVICE_BYTES
    return int(DEVICE_FRACTION * stats["bytes_limit"])


def on_device(placement: str, dataset: Dataset, mesh: jax.sharding.Mesh) -> bool:
    """Whether ``placement`` puts the training set on the device (``auto``: when the arrays fit its budget)."""
    if placement not in PLACEMENTS:
        raise ConfigError(f"data.placement={placement!r} is not supported; choose one of: {', '.join(PLACEMENTS)}")
    if placement != "auto":
        return placement == "device"
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    return dataset.train_x.nbytes + dataset.train_y.nbytes <= device_budget(local[0])


def choose(placement: str, dataset: Dataset, batch_size: int, mesh: jax.sharding.Mesh) -> Feed:
    """The feed ``placement`` asks for (:func:`on_device`)."""
    return (DeviceFeed if on_device(placement, dataset, mesh) else HostFeed)(dataset, batch_size, mesh)
