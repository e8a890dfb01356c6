"""What every lesson checker must do, tested for all of them in one place.

- the reference solution PASSES, and the checker hands it back;
- its PASSED line is the same on every run (strict nbval compares it), although the inputs
  are fresh random ones each time;
- a blank exercise (the generated stub) is NOT ATTEMPTED, and the reference is handed back;
- an answer that crashes is FAILED, in one line naming the error, never a traceback.

A new checker joins by being listed in CHECKERS. Lesson-specific behaviour (typical wrong
answers) is tested in tests/test_checks_lessonNN.py.
"""

from __future__ import annotations

import sys

import pytest
from checker_helpers import expect_failed, run_checker, stub

from utils import cnn, kernels, robustness, training
from utils.checks import lesson00_setup as l00
from utils.checks import lesson01_gpu_basics as l01
from utils.checks import lesson02_jit as l02
from utils.checks import lesson03_vmap_grad as l03
from utils.checks import lesson04_mnist_mlp as l04
from utils.checks import lesson05_cnn as l05
from utils.checks import lesson06_multi_device as l06
from utils.checks import lesson07_performance as l07
from utils.checks import lesson08_precision_reproducibility as l08
from utils.checks import lesson09_robustness as l09
from utils.checks import lesson10_pallas_kernels as l10

CHECKERS = {
    "00 array_nbytes": (l00.array_nbytes, l00.reference_array_nbytes),
    "00 to_unit_float": (l00.to_unit_float, l00.reference_to_unit_float),
    "00 class_counts": (l00.class_counts, l00.reference_class_counts),
    "01 matmul_flops": (l01.matmul_flops, l01.reference_matmul_flops),
    "01 matmul_bytes": (l01.matmul_bytes, l01.reference_matmul_bytes),
    "01 swap_rows": (l01.swap_rows, l01.reference_swap_rows),
    "01 time_call": (l01.time_call, l01.reference_time_call),
    "02 huber": (l02.huber, l02.reference_huber),
    "02 make_sgd_step": (l02.make_sgd_step, l02.reference_make_sgd_step),
    "02 ema": (l02.ema, l02.reference_ema),
    "02 pad_to_bucket": (l02.pad_to_bucket, l02.reference_pad_to_bucket),
    "03 pairwise_distances": (l03.pairwise_distances, l03.reference_pairwise_distances),
    "03 global_norm": (l03.global_norm, l03.reference_global_norm),
    "03 mse_with_aux": (l03.mse_with_aux, l03.reference_mse_with_aux),
    "03 per_example_grads": (l03.per_example_grads, l03.reference_per_example_grads),
    "03 numerical_grad": (l03.numerical_grad, l03.reference_numerical_grad),
    "03 hvp": (l03.hvp, l03.reference_hvp),
    "04 MLP.__call__": (l04.mlp, training.MLP),
    "04 cross_entropy_loss": (l04.cross_entropy_loss, training.cross_entropy_loss),
    "04 accuracy": (l04.accuracy, training.accuracy),
    "04 shuffled_batch_indices": (l04.shuffled_batch_indices, training.shuffled_batch_indices),
    "04 train_step": (l04.train_step, training.train_batch),
    "04 training_flops": (l04.training_flops, l04.reference_training_flops),
    "07 roofline_time": (l07.roofline_time, l07.reference_roofline_time),
    "07 prefetch_to_device": (l07.prefetch_to_device, l07.pipeline.prefetch_to_device),
    "07 remat_forward": (l07.remat_forward, l07.reference_remat_forward),
    "07 accumulated_grads": (l07.accumulated_grads, l07.reference_accumulated_grads),
    "07 train_epoch": (l07.train_epoch, l07.reference_train_epoch),
    "09 fgsm": (l09.fgsm, robustness.fgsm),
    "09 random_start": (l09.random_start, robustness.random_start),
    "09 pgd_step": (l09.pgd_step, robustness.pgd_step),
    "09 expected_calibration_error": (l09.expected_calibration_error,
                                      robustness.expected_calibration_error),
    "09 fit_temperature": (l09.fit_temperature, robustness.fit_temperature),
    "09 auroc": (l09.auroc, robustness.auroc),
    "06 ring_all_reduce": (l06.ring_all_reduce, l06.parallel.ring_all_reduce),
    "06 allreduce_traffic": (l06.allreduce_traffic, l06.parallel.allreduce_traffic),
    "06 device_grads": (l06.device_grads, l06.parallel.device_grads),
    "06 data_parallel_step": (l06.data_parallel_step, l06.parallel.data_parallel_step),
    "06 shard_bytes": (l06.shard_bytes, l06.parallel.shard_bytes),
    "08 round_to_bfloat16": (l08.round_to_bfloat16, l08.reference_round_to_bfloat16),
    "08 relative_error": (l08.relative_error, l08.reference_relative_error),
    "08 update_loss_scale": (l08.update_loss_scale, l08.reference_update_loss_scale),
    "08 worker_key": (l08.worker_key, l08.reference_worker_key),
    "08 first_difference": (l08.first_difference, l08.reference_first_difference),
    "05 conv_output_size": (l05.conv_output_size, cnn.conv_output_size),
    "05 conv2d_im2col": (l05.conv2d_im2col, l05.reference_conv2d_im2col),
    "05 max_pool": (l05.max_pool, l05.reference_max_pool),
    "05 CNN.__call__": (l05.cnn, cnn.CNN),
    "05 random_translate": (l05.random_translate, l05.reference_random_translate),
    "10 bias_relu": (l10.bias_relu, kernels.bias_relu),
    "10 matmul_kernel": (l10.matmul_kernel, kernels.matmul_kernel),
    "10 row_sum": (l10.row_sum, kernels.row_sum),
    "10 softmax_kernel": (l10.softmax_kernel, kernels.softmax_kernel),
    "10 logsumexp_kernel": (l10.logsumexp_kernel, kernels.logsumexp_kernel),
    "10 attention_kernel": (l10.attention_kernel, kernels.attention_kernel),
    "10 matmul_looped_kernel": (l10.matmul_looped_kernel, kernels.matmul_looped_kernel),
}


class _BlankMLP(training.MLP):
    """Lesson 04's blank exercise is a class whose forward pass is not written yet."""

    def __call__(self, x):
        raise NotImplementedError("write the forward pass")


class _CrashingMLP(training.MLP):
    def __call__(self, x):
        return 1 / 0


class _BlankCNN(cnn.CNN):
    def __call__(self, x):
        raise NotImplementedError("write the forward pass")


class _CrashingCNN(cnn.CNN):
    def __call__(self, x):
        return 1 / 0


#: Exercises whose answer is a class (a forward pass to write): their blank and crashing form.
_CLASS_EXERCISES = {"04 MLP.__call__": (_BlankMLP, _CrashingMLP),
                    "05 CNN.__call__": (_BlankCNN, _CrashingCNN)}


def _exercise(key: str) -> str:
    return key.split(" ", 1)[1]


def _blank(key: str):
    return _CLASS_EXERCISES[key][0] if key in _CLASS_EXERCISES else stub


def _crashing(key: str):
    if key in _CLASS_EXERCISES:
        return _CLASS_EXERCISES[key][1]

    def crashes(*args, **kwargs):
        return 1 / 0

    return crashes


@pytest.mark.parametrize("key", list(CHECKERS))
def test_reference_passes_and_is_returned(capsys, key):
    checker, reference = CHECKERS[key]
    line, use = run_checker(capsys, checker, reference)
    assert line.startswith(f"PASSED {_exercise(key)}:"), line
    assert use is reference


@pytest.mark.parametrize("key", list(CHECKERS))
def test_passed_line_is_the_same_every_run(capsys, key):
    checker, reference = CHECKERS[key]
    first, _ = run_checker(capsys, checker, reference)
    second, _ = run_checker(capsys, checker, reference)
    assert first == second


@pytest.mark.parametrize("key", list(CHECKERS))
def test_blank_exercise_is_not_attempted_and_reference_is_returned(capsys, key):
    checker, reference = CHECKERS[key]
    line, use = run_checker(capsys, checker, _blank(key))
    assert line.startswith(f"NOT ATTEMPTED {_exercise(key)}:"), line
    assert "continues with the reference" in line
    # It says what the exercise is for (the first tier of its HINTS), not what to type.
    hints = sys.modules[checker.__module__].HINTS[_exercise(key)]
    assert " ".join(hints.about.split()).rstrip(".") in line, line
    assert use is reference


@pytest.mark.parametrize("key", list(CHECKERS))
def test_a_crashing_answer_fails_in_one_line(capsys, key):
    checker, _ = CHECKERS[key]
    expect_failed(capsys, checker, _exercise(key), _crashing(key), "ZeroDivisionError")


def test_every_checker_of_every_lesson_is_listed():
    """A checker is a function of utils/checks/lessonNN_*.py taking ``student_fn`` or
    ``student_cls`` first; each must be listed above, so each gets the tests above."""
    import importlib
    import inspect
    import pkgutil

    import utils.checks

    listed = {checker for checker, _ in CHECKERS.values()}
    found = []
    for info in pkgutil.iter_modules(utils.checks.__path__):
        module = importlib.import_module(f"utils.checks.{info.name}")
        for name, f in inspect.getmembers(module, inspect.isfunction):
            params = list(inspect.signature(f).parameters)
            if f.__module__ == module.__name__ and params and params[0].startswith("student"):
                found.append(f)
                assert f in listed, f"{info.name}.{name} is a checker missing from CHECKERS"
    assert len(found) == len(CHECKERS)
