"""Helpers for the course "GPU-accelerated deep learning with JAX".

Importing ``utils`` imports no JAX, so a lesson can still choose its devices (simulated CPU
devices, GPU memory settings) before JAX starts. Import the modules you need by name::

    from utils import environment, timing, data, plotting, exercises

Modules (and the lesson that introduces each):

- ``environment``: where am I running, which devices, version report, device set-up (00).
- ``colab``: the set-up every notebook's first cell runs on Google Colab (00).
- ``timing``: the one benchmark helper of the course (01).
- ``data``: MNIST and Fashion-MNIST loaders with verified, cached downloads (00, used from 04).
- ``plotting``: image grids, measurement plots, speed-up bars, rooflines (01).
- ``exercises``: the checker framework that answers PASSED / FAILED / NOT ATTEMPTED (00).
- ``errors``: ``expect_error``, to show an expected error and go on (00).
- ``introspection``: compilation counter, jaxpr size, traceability checks (02).
- ``training``: Flax NNX + Optax training steps, evaluation and epoch loops (04).
- ``sizing``: ``sized(cpu=, gpu=, smoke=)``, the one helper that sizes a lesson's work (01).
- ``cnn``: the CNN, convolution pieces and on-device augmentation (05).
- ``parallel``: several devices and several processes (06).
- ``pipeline``: prefetching batches from the host to the device (07).
- ``profiling``: reading profiler traces and compiler reports (07).
- ``precision``: float formats, mixed precision, loss scaling, reproducibility (08).
- ``robustness``: attacks, corruptions, calibration, out-of-distribution scores (09).
- ``kernels``: Pallas kernels, the block checker and the memory-traffic counter (10).
- ``grading``: ``course-grade``, for instructors.
- ``sandbox``: the sandboxes ``course-grade`` runs students' kernels in.
- ``checks``: one module of exercise checkers per lesson.
"""

__all__ = [
    "checks", "cnn", "colab", "data", "environment", "errors", "exercises", "grading",
    "introspection", "kernels", "parallel", "pipeline", "plotting", "precision",
    "profiling", "robustness", "sandbox", "sizing", "timing", "training",
]
