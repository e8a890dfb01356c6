"""Training throughput of the lesson 05 CNN: a JAX step loop against PyTorch eager.

    python benchmarks/cnn_throughput.py                      # 50 steps x 5 rounds, batch 128
    python benchmarks/cnn_throughput.py --steps 100 --channels 32 64 --hidden 256

The same network in both (conv 3x3 -> BatchNorm -> ReLU -> 2x2 max-pool, twice, then dense
-> ReLU -> dropout -> dense; lesson 05's sizes by default), the same AdamW (learning rate
1e-3, weight decay 1e-4) and batch size, on MNIST-shaped random data held on the device.
Each JAX step is ``utils.training``'s jitted step (batch taken by index on the device, the
model in train mode: batch statistics and dropout). As in ``mlp_throughput.py`` (both use
``common.py``), the variants run INTERLEAVED (every round times each once; the median over
rounds is reported), and compilation / the first steps happen in a warm-up reported apart.
No ``lax.scan`` variant: on CPUs a CNN epoch as one scan is much slower than a step loop
(see FIELD_NOTES).

PyTorch is optional (``pip install torch==2.13.0`` gives a CPU build); it runs on the GPU
when JAX does and CUDA is available to it, else on the CPU with ``torch.set_num_threads``
set to the number of usable cores.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a clone, too
sys.path.insert(0, str(HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from common import (  # noqa: E402
    add_run_arguments,
    add_torch_variant,
    check_at_least_one,
    device_line,
    measure,
    print_rates,
    torch_device,
    torch_step_loop,
)
from flax import nnx  # noqa: E402

from utils import cnn, training  # noqa: E402

LEARNING_RATE, WEIGHT_DECAY = 1e-3, 1e-4


def make_data(num_examples: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """MNIST-shaped data on the device: ``(N, 28, 28, 1)`` uint8 images, ``(N,)`` int32."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    images = jax.random.randint(k1, (num_examples, 28, 28, 1), 0, 256).astype(jnp.uint8)
    labels = jax.random.randint(k2, (num_examples,), 0, 10, jnp.int32)
    return images, labels


def jax_variant(steps: int, batch_size: int, channels: tuple[int, int], hidden: int,
                dropout: float, seed: int = 0) -> dict[str, Callable[[], None]]:
    """``{"jax step loop": run}``; ``run()`` trains ``steps`` steps of the CNN."""
    images, labels = make_data(steps * batch_size, seed)
    batches = jax.random.permutation(jax.random.key(seed + 1), steps * batch_size)
    batches = batches.reshape(steps, batch_size).astype(jnp.int32)
    model = cnn.CNN(channels=channels, hidden=hidden, dropout=dropout, rngs=nnx.Rngs(seed))
    model.train()
    optimizer = training.create_optimizer(
        model, optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY))
    step = training.make_train_step()

    def step_loop() -> None:
        out = [step(model, optimizer, images, labels, idx) for idx in batches]
        jax.block_until_ready(out)

    return {"jax step loop": step_loop}


def torch_variant(steps: int, batch_size: int, channels: tuple[int, int], hidden: int,
                  dropout: float, threads: int,
                  seed: int = 0) -> tuple[dict[str, Callable[[], None]], str]:
    """``({"pytorch eager": run}, description)``; raises ImportError without PyTorch."""
    import torch
    from torch import nn

    device, where = torch_device(threads)
    torch.manual_seed(seed)
    c1, c2 = channels
    model = nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(7 * 7 * c2, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, 10),
    ).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE,
                                  weight_decay=WEIGHT_DECAY)
    generator = torch.Generator().manual_seed(seed)
    n = steps * batch_size
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=generator,
                           dtype=torch.uint8).to(device)
    labels = torch.randint(0, 10, (n,), generator=generator).to(device)
    batches = torch.randperm(n, generator=generator).reshape(steps, batch_size).to(device)
    run = torch_step_loop(model, optimizer, images, labels, batches,
                          prepare=lambda x: x.float() / 255)
    return {"pytorch eager": run}, where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, steps=50)
    parser.add_argument("--channels", type=int, nargs=2, default=(24, 48),
                        help="channels of the two conv layers (default: lesson 05's 24 48)")
    parser.add_argument("--hidden", type=int, default=128, help="dense layer width")
    parser.add_argument("--dropout", type=float, default=0.25)
    args = parser.parse_args(argv)
    check_at_least_one(parser, args, ("steps", "rounds", "batch_size", "threads", "hidden"))
    if min(args.channels) < 1:
        parser.error("--channels must be two positive numbers")
    if not 0 <= args.dropout < 1:
        parser.error("--dropout must be in [0, 1)")

    channels = tuple(args.channels)
    print(device_line())
    print(f"config: CNN conv{channels[0]}-pool-conv{channels[1]}-pool-{args.hidden}-10 with "
          f"BatchNorm and dropout {args.dropout:g}, AdamW, batch {args.batch_size}, "
          f"{args.steps} steps per round, {args.rounds} rounds, interleaved, "
          f"{args.pause:g} s pause before each run")
    sizes = (args.steps, args.batch_size, channels, args.hidden, args.dropout)
    variants = jax_variant(*sizes)
    add_torch_variant(variants, args.no_torch, lambda: torch_variant(*sizes, args.threads),
                      "JAX only")

    warmup, median = measure(variants, args.rounds, max(args.pause, 0.0))
    print_rates(list(variants), warmup, median, args.rounds, args.steps * args.batch_size,
                [("jax step loop", "pytorch eager")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
