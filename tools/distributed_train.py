"""Data-parallel training of lesson 04's MLP on MNIST across processes (lesson 06_multi_device).

One program for every layout: each process runs this script, ``jax.distributed.initialize``
connects them, and from then on ``jax.devices()`` lists the devices of *all* processes. The
step is lesson 06's ``jit`` with shardings (state replicated, each global batch split along
``'data'``, each process feeding its own rows), so the losses are those of one process with
as many devices. The program itself is ``utils.parallel.distributed_main``.

On one machine (what the lesson and the tests do), 2 processes x 4 CPU devices::

    python tools/distributed_train.py --coordinator 127.0.0.1:12345 --num-processes 2 \\
        --process-id 0 --cpu-devices 4 &
    python tools/distributed_train.py --coordinator 127.0.0.1:12345 --num-processes 2 \\
        --process-id 1 --cpu-devices 4

On several GPU hosts, run it once per host with the first host's address as the
coordinator (``--process-id`` 0 there, 1, 2, ... on the others): each process then uses all
of its host's GPUs. Under Slurm (or Open MPI) give no ``--coordinator``:
``jax.distributed.initialize()`` reads the job's variables, and on GPUs it gives each process
*one* GPU, the one numbered by its local rank (``SLURM_LOCALID``; Open MPI's local rank):
``jax/_src/clusters``, and the ``local_device_ids`` entry of ``jax.distributed.initialize``'s
documentation. So start one task per GPU, each
seeing all of its node's GPUs (2 nodes x 8 GPUs: 16 processes, 16 devices)::

    srun --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 python tools/distributed_train.py

With one task per node instead (``--ntasks-per-node=1``), JAX would use one GPU per node
(2 devices, not 16) unless the task names all of them::

    srun --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 python tools/distributed_train.py \\
        --local-device-ids 0,1,2,3,4,5,6,7

Each process prints one line ``RESULT {json}``; ``--num-processes 1`` runs alone, without
``jax.distributed``. ``--help`` lists the options.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the course's utils/

from utils.parallel import distributed_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(distributed_main())
