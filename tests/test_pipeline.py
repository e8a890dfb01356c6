"""Tests of utils/pipeline.py: prefetch_to_device and numpy_batches."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from utils.pipeline import numpy_batches, prefetch_to_device


class Counting:
    """An iterable that records how many items were read from it."""

    def __init__(self, items):
        self.items, self.read = items, 0

    def __iter__(self):
        for item in self.items:
            self.read += 1
            yield item


def _items(n):
    rng = np.random.default_rng(0)
    return [(rng.normal(size=(2, 3)).astype(np.float32), np.arange(2, dtype=np.int32) + i)
            for i in range(n)]


@pytest.mark.parametrize("n,size", [(5, 2), (3, 1), (2, 4), (1, 1)])
def test_prefetch_yields_every_batch_in_order_on_the_device(n, size):
    items = _items(n)
    out = list(prefetch_to_device(items, size))
    assert len(out) == n
    for (x, y), (hx, hy) in zip(out, items, strict=True):
        assert isinstance(x, jax.Array) and isinstance(y, jax.Array)
        assert x.devices() == {jax.devices()[0]}
        np.testing.assert_array_equal(np.asarray(x), hx)
        np.testing.assert_array_equal(np.asarray(y), hy)
        assert x.dtype == hx.dtype and y.dtype == hy.dtype


@pytest.mark.parametrize("size", [1, 2, 3])
def test_prefetch_reads_exactly_size_batches_ahead(size):
    source = Counting(_items(6))
    iterator = prefetch_to_device(source, size)
    assert source.read == 0  # a generator: nothing is read before the first next()
    for k in range(1, 7):
        next(iterator)
        assert source.read == min(6, k + size)
    with pytest.raises(StopIteration):
        next(iterator)


def test_prefetch_of_a_single_array_a_dict_and_an_empty_source():
    x = np.ones((4,), np.float32)
    (only,) = list(prefetch_to_device([x], 3))
    assert isinstance(only, jax.Array) and only.shape == (4,)
    (d,) = list(prefetch_to_device([{"a": x, "b": (x, x)}], 1))
    assert set(d) == {"a", "b"} and isinstance(d["b"][1], jax.Array)
    assert list(prefetch_to_device(iter([]), 2)) == []


def test_prefetch_to_an_explicit_device():
    device = jax.devices()[-1]
    (x,) = list(prefetch_to_device([np.zeros(2)], 1, device=device))
    assert x.devices() == {device}


@pytest.mark.parametrize("size", [0, -1, 1.5, True, "2"])
def test_prefetch_rejects_a_bad_size(size):
    with pytest.raises(ValueError, match="size must be a whole number >= 1"):
        next(prefetch_to_device(_items(2), size))


def test_numpy_batches_are_full_shuffled_batches_of_each_epoch():
    images = np.arange(10 * 4, dtype=np.float32).reshape(10, 2, 2)
    labels = np.arange(10, dtype=np.int32)
    batches = list(numpy_batches(images, labels, 3, seed=1, epochs=2))
    assert len(batches) == 6  # 10 // 3 per epoch, the remainder dropped
    for x, y in batches:
        assert isinstance(x, np.ndarray) and x.shape == (3, 2, 2) and y.shape == (3,)
        np.testing.assert_array_equal(x[:, 0, 0], 4 * y)  # images and labels stay paired
    first_epoch = np.concatenate([y for _, y in batches[:3]])
    assert len(set(first_epoch.tolist())) == 9  # no example twice within an epoch
    assert not np.array_equal(first_epoch, np.sort(first_epoch))
    again = list(numpy_batches(images, labels, 3, seed=1, epochs=2))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(batches, again, strict=True))


def test_numpy_batches_with_batch_of_one_and_batch_of_all():
    images, labels = np.zeros((4, 1), np.float32), np.arange(4)
    assert len(list(numpy_batches(images, labels, 1))) == 4
    ((x, y),) = list(numpy_batches(images, labels, 4))
    assert sorted(y.tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("images,labels,batch_size,match", [
    (np.zeros((4, 2)), np.zeros(3), 2, "same N"),
    (np.zeros((4, 2)), np.zeros((4, 1)), 2, "same N"),
    (np.zeros((4, 2)), np.zeros(4), 0, "batch_size must be"),
    (np.zeros((4, 2)), np.zeros(4), 5, "larger than the 4 examples"),
])
def test_numpy_batches_bad_input(images, labels, batch_size, match):
    with pytest.raises(ValueError, match=match):
        next(numpy_batches(images, labels, batch_size))
