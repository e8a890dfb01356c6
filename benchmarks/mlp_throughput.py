"""Training throughput of the lesson 04 MLP: JAX step loop, JAX lax.scan epoch, PyTorch eager.

    python benchmarks/mlp_throughput.py                      # 200 steps x 5 rounds, batch 128
    python benchmarks/mlp_throughput.py --steps 400 --rounds 7 --batch-size 256

The same model (784-512-512-10, ReLU, LeCun-normal weights, zero biases), the same Adam
(learning rate 1e-3) and the same batch size in each variant, on MNIST-shaped random data
held on the device (the speed does not depend on the values). Each step takes its batch by
index from the data on the device, computes the loss and the batch accuracy, and updates the
parameters. The variants run INTERLEAVED: every round times each variant once, so a change
in machine load hits all of them alike; the median over rounds is reported. Compilation (JAX)
and the first steps (PyTorch) happen in a warm-up before the rounds and are reported apart.

PyTorch is optional (``pip install torch==2.13.0`` gives a CPU build); without it only the
JAX variants are compared. PyTorch runs on the GPU when JAX does and CUDA is available to
it, else on the CPU with ``torch.set_num_threads`` set to the number of usable cores.
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

from utils import training  # noqa: E402

LAYERS = (784, 512, 512, 10)
LEARNING_RATE = 1e-3


def make_data(num_examples: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """MNIST-shaped random data on the default device: ``(N, 28, 28)`` float32, ``(N,)`` int32."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    images = jax.random.normal(k1, (num_examples, 28, 28), jnp.float32)
    labels = jax.random.randint(k2, (num_examples,), 0, LAYERS[-1], jnp.int32)
    return images, labels


def jax_variants(steps: int, batch_size: int, seed: int = 0) -> dict[str, Callable[[], None]]:
    """``{"jax step loop": run, "jax lax.scan": run}``; each ``run()`` trains ``steps`` steps."""
    num_examples = max(steps * batch_size, batch_size)
    images, labels = make_data(num_examples, seed)
    batches = jnp.arange(steps * batch_size, dtype=jnp.int32).reshape(steps, batch_size)
    batches = jax.random.permutation(jax.random.key(seed + 1), batches.ravel()).reshape(
        steps, batch_size)
    step = training.make_train_step()
    scan_epoch = training.make_scan_epoch()

    def fresh() -> tuple[nnx.Module, nnx.Optimizer]:
        model = training.MLP(*LAYERS[:2], LAYERS[-1], rngs=nnx.Rngs(seed))
        return model, training.create_optimizer(model, optax.adam(LEARNING_RATE))

    loop_state, scan_state = fresh(), fresh()

    def step_loop() -> None:
        model, optimizer = loop_state
        out = [step(model, optimizer, images, labels, idx) for idx in batches]
        jax.block_until_ready(out)

    def scan() -> None:
        model, optimizer = scan_state
        jax.block_until_ready(scan_epoch(model, optimizer, images, labels, batches))

    return {"jax step loop": step_loop, "jax lax.scan": scan}


def torch_variant(steps: int, batch_size: int, threads: int,
                  seed: int = 0) -> tuple[dict[str, Callable[[], None]], str]:
    """``({"pytorch eager": run}, description)``; raises ImportError without PyTorch."""
    import torch
    from torch import nn

    device, where = torch_device(threads)
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (din, dout) in enumerate(zip(LAYERS[:-1], LAYERS[1:], strict=True)):
        linear = nn.Linear(din, dout)
        std = (1.0 / din) ** 0.5 / 0.87962566103423978  # Flax's default: LeCun normal,
        nn.init.trunc_normal_(linear.weight, std=std, a=-2 * std, b=2 * std)  # truncated at 2 sd
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(LAYERS) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    num_examples = max(steps * batch_size, batch_size)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(num_examples, 28, 28, generator=generator).to(device)
    labels = torch.randint(0, LAYERS[-1], (num_examples,), generator=generator).to(device)
    batches = torch.randperm(steps * batch_size, generator=generator).reshape(steps, batch_size)
    batches = batches.to(device)
    return {"pytorch eager": torch_step_loop(model, optimizer, images, labels, batches)}, where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, steps=200)
    args = parser.parse_args(argv)
    check_at_least_one(parser, args, ("steps", "rounds", "batch_size", "threads"))

    print(device_line())
    print(f"config: MLP {'-'.join(map(str, LAYERS))}, Adam, batch {args.batch_size}, "
          f"{args.steps} steps per round, {args.rounds} rounds, interleaved, "
          f"{args.pause:g} s pause before each run")
    variants = jax_variants(args.steps, args.batch_size)
    add_torch_variant(variants, args.no_torch,
                      lambda: torch_variant(args.steps, args.batch_size, args.threads),
                      "comparing the JAX variants only")

    warmup, median = measure(variants, args.rounds, max(args.pause, 0.0))
    print_rates(list(variants), warmup, median, args.rounds, args.steps * args.batch_size,
                [("jax step loop", "pytorch eager"), ("jax lax.scan", "pytorch eager"),
                 ("jax lax.scan", "jax step loop")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
