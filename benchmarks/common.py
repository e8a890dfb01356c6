"""What the throughput benchmarks share: cores, interleaved timing, the PyTorch step loop.

- :func:`usable_cores`: the cores this process may run on.
- :func:`measure`: warm every variant up, then time them in interleaved rounds (medians).
- :func:`torch_device`: where PyTorch runs (CUDA when JAX runs on a GPU and PyTorch sees one,
  else the CPU with one thread per usable core) and a line that says so.
- :func:`torch_step_loop`: ``steps`` PyTorch eager training steps as one callable, each
  taking its batch by index from data on the device, as the JAX variants do.
- :func:`print_rates`: the examples/s lines and the ratios between variants.

PyTorch is imported only inside the functions that need it, so the JAX-only runs work
without it.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def measure(variants: dict[str, Callable[[], None]], rounds: int,
            pause: float = 0.0) -> tuple[dict[str, float], dict[str, float]]:
    """Warm each variant up once, then ``rounds`` interleaved rounds.

    ``pause`` seconds of idling before each timed run let the previous library's worker
    threads go to sleep (busy-waiting threads would steal cores from the next variant).
    Returns ``(warm-up seconds, median seconds per run)`` per variant.
    """
    warmup = {}
    for name, run in variants.items():
        start = time.perf_counter()
        run()
        warmup[name] = time.perf_counter() - start
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            time.sleep(pause)
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return warmup, {name: statistics.median(s) for name, s in samples.items()}


def torch_device(threads: int) -> tuple[Any, str]:
    """``(torch.device, description)``: CUDA when JAX runs on a GPU and PyTorch has CUDA,
    else the CPU with ``torch.set_num_threads(threads)``. Raises ImportError without PyTorch."""
    import jax
    import torch

    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        return torch.device("cuda"), f"PyTorch {torch.__version__} eager on cuda"
    torch.set_num_threads(threads)
    return (torch.device("cpu"),
            f"PyTorch {torch.__version__} eager on cpu, torch.set_num_threads({threads})")


def torch_step_loop(model: Any, optimizer: Any, images: Any, labels: Any, batches: Any,
                    prepare: Callable[[Any], Any] = lambda x: x) -> Callable[[], None]:
    """A callable that runs one PyTorch eager training step per row of ``batches``.

    Each step takes ``images[idx]`` (through ``prepare``, e.g. uint8 to float) and
    ``labels[idx]``, computes the cross-entropy loss and the batch accuracy, and updates the
    parameters, like the JAX steps it is compared with. On CUDA the callable waits for the
    device at the end.
    """
    import torch
    from torch import nn

    loss_fn = nn.CrossEntropyLoss()
    on_cuda = images.device.type == "cuda"

    def run() -> None:
        for idx in batches:
            x, y = prepare(images[idx]), labels[idx]
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = loss_fn(logits, y)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                (logits.argmax(dim=1) == y).float().mean()
        if on_cuda:
            torch.cuda.synchronize()

    return run


def print_rates(variants: Sequence[str], warmup: dict[str, float], median: dict[str, float],
                rounds: int, examples: int, pairs: Sequence[tuple[str, str]]) -> None:
    """Print ``name: N examples/s`` per variant, then ``ratio a / b: R.RRx`` for each pair
    whose two variants both ran."""
    rate = {name: examples / seconds for name, seconds in median.items()}
    for name in variants:
        print(f"{name}: {rate[name]:.0f} examples/s (median of {rounds} rounds; "
              f"warm-up incl. compile {warmup[name]:.2f} s)")
    for a, b in pairs:
        if a in rate and b in rate:
            print(f"ratio {a} / {b}: {rate[a] / rate[b]:.2f}x")
