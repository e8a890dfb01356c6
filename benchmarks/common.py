"""What the throughput benchmarks share: cores, interleaved timing, the PyTorch step loop.

- :func:`usable_cores`: the cores this process may run on.
- :func:`measure`: warm every variant up, then time them in interleaved rounds (medians).
- :func:`torch_device`: where PyTorch runs (CUDA when JAX runs on a GPU and PyTorch sees one,
  else the CPU with one thread per usable core) and a line that says so.
- :func:`torch_step_loop`: ``steps`` PyTorch eager training steps as one callable, each
  taking its batch by index from data on the device, as the JAX variants do.
- :func:`add_run_arguments`, :func:`check_at_least_one`: the command-line options both
  scripts take (steps, rounds, batch size, PyTorch threads, pause, ``--no-torch``).
- :func:`device_line`: the line that names the JAX device and the usable cores.
- :func:`add_torch_variant`: PyTorch's variant added where it is installed and wanted, with
  the line that says which.
- :func:`print_rates`: the examples/s lines and the ratios between variants.

PyTorch is imported only inside the functions that need it, so the JAX-only runs work
without it.
"""

from __future__ import annotations

import argparse
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


def add_run_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    """The options of every benchmark: ``--steps`` (default ``steps``), ``--rounds``,
    ``--batch-size``, ``--threads``, ``--pause`` and ``--no-torch``."""
    parser.add_argument("--steps", type=int, default=steps, help="train steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=usable_cores(),
                        help="torch.set_num_threads on CPU (default: usable cores)")
    parser.add_argument("--pause", type=float, default=0.5,
                        help="seconds idle before each timed run (default 0.5)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")


def check_at_least_one(parser: argparse.ArgumentParser, args: argparse.Namespace,
                       names: Sequence[str]) -> None:
    """Exit with a usage error (status 2) if any of ``args.<name>`` is below 1."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")


def device_line() -> str:
    """``device: cpu:0 cpu; 2 usable CPU cores; JAX 0.10.2`` for JAX's first device."""
    import jax

    d = jax.devices()[0]
    return (f"device: {d.platform}:{d.id} {d.device_kind}; {usable_cores()} usable CPU cores; "
            f"JAX {jax.__version__}")


def add_torch_variant(variants: dict[str, Callable[[], None]], skip: bool,
                      make: Callable[[], tuple[dict[str, Callable[[], None]], str]],
                      without: str) -> None:
    """Add PyTorch's variant(s) from ``make()`` to ``variants`` and print the line that says
    where it runs; or, with ``skip`` or without PyTorch installed, print why not, ending
    with ``without`` (what is compared instead)."""
    if skip:
        print(f"pytorch: skipped (--no-torch); {without}")
        return
    try:
        runs, where = make()
    except ImportError:
        print(f"pytorch: not installed (pip install torch==2.13.0 for a CPU build); {without}")
        return
    print(f"pytorch: {where}")
    variants.update(runs)


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
