"""Training batches: the order is a function of (seed, epoch) only; device and host feeds agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncjax import data, parallel
from ncjax.data import feed as feeds
from ncjax.errors import ConfigError, DataError


def _dataset(n=103, classes=4):
    x = np.arange(n, dtype=np.float32).reshape(n, 1) * np.ones((1, 3), np.float32)
    y = (np.arange(n) % classes).astype(np.int32)
    return data.Dataset(x, y, None, None, classes, "vector", "ramp")


def _reference_order(seed, epoch, n):
    """The definition, written out: a jax.random permutation keyed by fold_in(key(seed), epoch)."""
    key = jax.random.fold_in(jax.random.key(np.uint32(seed)), np.uint32(epoch))
    return np.asarray(jax.random.permutation(key, n))


def test_epoch_order_is_a_permutation_that_depends_on_seed_and_epoch():
    orders = {(s, e): np.asarray(feeds.epoch_order(s, e, 103)) for s in (0, 5) for e in (0, 1, 2)}
    for (seed, epoch), order in orders.items():
        np.testing.assert_array_equal(np.sort(order), np.arange(103))
        np.testing.assert_array_equal(order, _reference_order(seed, epoch, 103))
    assert len({o.tobytes() for o in orders.values()}) == len(orders)


def _block_batches(feed, seeds, start, length):
    """(x, y) of every step of a block, [T, M, B, ...], through the feed's traced interface."""
    seeds = jnp.asarray(seeds, jnp.uint32)
    carry = feed.carry(seeds, start)
    inputs = feed.block_inputs(np.asarray(seeds), start, length)

    def run(carry, arrays, inputs):
        def body(carry, index):
            (x, y), carry = feed.batch(arrays, carry, inputs, seeds, start + index, index)
            return carry, (x, y)
        return jax.lax.scan(body, carry, jnp.arange(length))[1]

    return jax.device_get(jax.jit(run)(carry, feed.arrays, inputs))


@pytest.mark.parametrize("placement", ["device", "host"])
def test_batches_follow_the_epoch_order_across_epoch_boundaries(placement):
    ds = _dataset()
    mesh = parallel.make_mesh()
    feed = feeds.choose(placement, ds, 16, mesh)
    assert feed.steps_per_epoch == 6 and feed.on_device == (placement == "device")
    x, y = _block_batches(feed, [3, 7], start=4, length=9)  # steps 4..12 cross two epoch boundaries
    assert x.shape == (9, 2, 16, 3) and y.shape == (9, 2, 16)
    for t, step in enumerate(range(4, 13)):
        epoch, k = divmod(step, 6)
        for m, seed in enumerate((3, 7)):
            idx = _reference_order(seed, epoch, 103)[k * 16:(k + 1) * 16]
            np.testing.assert_array_equal(x[t, m, :, 0], idx)
            np.testing.assert_array_equal(y[t, m], idx % 4)
    if placement == "host":
        feed.close()


def test_order_does_not_depend_on_the_device_count():
    ds = _dataset()
    one = feeds.DeviceFeed(ds, 16, parallel.make_mesh(devices=jax.devices()[:1]))
    eight = feeds.DeviceFeed(ds, 16, parallel.make_mesh(data=2, fsdp=4))
    np.testing.assert_array_equal(_block_batches(one, [1], 0, 7)[0], _block_batches(eight, [1], 0, 7)[0])


def test_auto_placement_and_bad_inputs(monkeypatch):
    ds = _dataset()
    mesh = parallel.make_mesh()
    assert feeds.choose("auto", ds, 16, mesh).on_device
    monkeypatch.setattr(feeds, "CPU_DEVICE_BYTES", 100)
    assert not feeds.choose("auto", ds, 16, mesh).on_device  # too big for the budget: streamed from the host
    with pytest.raises(ConfigError, match="data.placement='disk'"):
        feeds.choose("disk", ds, 16, mesh)
    with pytest.raises(DataError, match="larger than the 103 training examples"):
        feeds.choose("device", ds, 128, mesh)
