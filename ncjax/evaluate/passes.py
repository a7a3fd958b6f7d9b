"""A pass over one evaluation split: one compiled program, the split resident on the device or streamed.

Resident: the split lives on the device (replicated) and a ``lax.scan`` gathers its
batches. Streamed (data larger than the device's share): one batch is prepared on the
host while the previous one computes. Every member is vmapped inside the body; nothing
is held beyond a batch.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from ncjax import data, parallel


class Split:
    """One evaluation split, resident on the device (replicated) or streamed from the host in batches."""

    def __init__(self, x: np.ndarray, y: np.ndarray, mesh: jax.sharding.Mesh, batch_size: int, resident: bool,
                 device_arrays: tuple[jax.Array, jax.Array] | None = None):
        self.n, self.mesh, self.batch_size, self.resident = len(y), mesh, batch_size, resident
        self.num_batches = -(-self.n // batch_size)
        self.host = (x, y)
        if resident and device_arrays is None:
            rep = parallel.replicated(mesh)
            device_arrays = tuple(jax.make_array_from_callback(a.shape, rep, lambda i, a=a: a[i]) for a in (x, y))
        self.arrays = device_arrays if resident else None

    def batch_sharding(self, ndim: int) -> NamedSharding:
        return parallel.batch_sharding(self.mesh, ndim)


class Pass:
    """A fold of ``body(carry, consts, x, y) → carry`` over every batch of a split, compiled once.

    Padding rows (the ragged last batch) carry the label -1, which every body ignores.
    """

    def __init__(self, body: Callable, split: Split):
        self.split = split
        s = split

        def constrain(x, y):
            return (jax.lax.with_sharding_constraint(x, s.batch_sharding(x.ndim)),
                    jax.lax.with_sharding_constraint(y, s.batch_sharding(1)))

        if s.resident:
            def run(carry, consts, arrays):
                x_all, y_all = arrays

                def step(carry, b):
                    idx = b * s.batch_size + jnp.arange(s.batch_size)
                    valid = idx < s.n
                    idx = jnp.minimum(idx, s.n - 1)
                    x, y = constrain(x_all[idx], jnp.where(valid, y_all[idx], data.PAD_LABEL))
                    return body(carry, consts, x, y), None

                return jax.lax.scan(step, carry, jnp.arange(s.num_batches))[0]
        else:
            def run(carry, consts, batch):
                return body(carry, consts, *constrain(*batch))
        self._jit = jax.jit(run, donate_argnums=0)
        self._compiled = None

    def compile(self, carry, consts) -> None:
        """Compile ahead of the first call (shapes from ``carry`` and ``consts``, which may be abstract)."""
        example = self.split.arrays if self.split.resident else next(self._host_batches(lambda: None))
        self._compiled = self._jit.lower(carry, consts, example).compile()

    def _host_batches(self, pending: Callable[[], Any]):
        """Device batches; waits for ``pending()`` before handing out the next, so that one batch is in
        flight while the next is prepared and memory does not grow with the data."""
        s = self.split
        for xb, yb in data.eval_batches(*s.host, s.batch_size, jax.process_index(), jax.process_count()):
            batch = (jax.make_array_from_process_local_data(s.batch_sharding(xb.ndim), xb),
                     jax.make_array_from_process_local_data(s.batch_sharding(1), yb))
            jax.block_until_ready(pending())
            yield batch

    def __call__(self, carry, consts):
        run = self._compiled or self._jit
        if self.split.resident:
            return run(carry, consts, self.split.arrays)
        state = {"carry": carry}
        for batch in self._host_batches(lambda: state["carry"]):
            state["carry"] = run(state["carry"], consts, batch)
        return state["carry"]
