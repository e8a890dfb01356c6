"""Exercise checkers, one module per lesson (``lessonNN_name.py``), with reference solutions.

Import the lesson's module by name, e.g. ``from utils.checks import lesson01_gpu_basics as check``.
"""
