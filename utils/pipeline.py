"""Input pipelines that feed the device from the host (introduced in lesson 07_performance).

When a dataset does not fit on the device, every batch starts on the host (NumPy) and must
be copied over. :func:`prefetch_to_device` starts those copies a few batches ahead, so the
copy of the next batch overlaps the computation of the current one; :func:`numpy_batches`
is a small host-side loader to feed it (shuffled batches cut from NumPy arrays).

Example::

    for images, labels in prefetch_to_device(numpy_batches(x, y, 128, seed=0), size=2):
        loss = train_step(params, images, labels)   # images, labels: jax.Array on the device
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

__all__ = ["numpy_batches", "prefetch_to_device"]


def prefetch_to_device(batches: Iterable[Any], size: int = 2,
                       device: Any | None = None) -> Iterator[Any]:
    """Yield the items of ``batches`` placed on ``device``, transferred ``size`` items ahead.

    Args:
      batches: any iterable of pytrees of arrays (a NumPy array, a tuple ``(images, labels)``,
        a dict, ...), usually produced on the host. It is read lazily, once.
      size: how many batches are transferred ahead: when item ``k`` (counting from 1) is
        handed out, items ``k + 1 .. k + size`` have already been read from ``batches`` and
        their copies started with ``jax.device_put`` (which returns at once; the copy runs
        while the caller computes). At least 1.
      device: where to put them; default: JAX's default device.

    Yields:
      Every item of ``batches`` once and in order, with each array leaf a ``jax.Array`` on
      ``device`` (same shapes, dtypes and tree structure).
    """
    import jax

    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a whole number >= 1 (how many batches to transfer "
                         f"ahead), got {size!r}. Use size=1 or 2; more only costs memory.")
    if device is None:
        device = jax.devices()[0]
    iterator = iter(batches)
    queue: collections.deque[Any] = collections.deque()

    def enqueue(n: int) -> None:
        for item in itertools.islice(iterator, n):
            queue.append(jax.device_put(item, device))

    enqueue(size)  # the first `size` copies start before anything is handed out
    while queue:
        item = queue.popleft()
        enqueue(1)  # keep `size` copies in flight while the caller works on `item`
        yield item


def numpy_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *,
                  seed: int = 0, epochs: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled full batches ``(images[idx], labels[idx])`` cut on the host with NumPy.

    images ``(N, ...)`` and labels ``(N,)``; each epoch a fresh permutation (from ``seed``)
    is cut into ``N // batch_size`` batches of ``batch_size`` (the remainder is dropped, so
    every batch has the same shape and a jitted step compiles once). Yields NumPy arrays
    (copies, as a real loader that decodes or augments would), never device arrays.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim < 1 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"images (N, ...) and labels (N,) must have the same N, got shapes "
                         f"{images.shape} and {labels.shape}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}.")
    if batch_size > len(images):
        raise ValueError(f"batch_size {batch_size} is larger than the {len(images)} examples.")
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(images))
        for start in range(0, len(images) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            yield images[idx], labels[idx]
