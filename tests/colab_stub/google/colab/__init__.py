"""A stand-in for Google Colab's ``google.colab`` package: the Colab replica leg's only.

Colab's kernels import ``google.colab`` when they start, and the course's first cell knows it
is on Colab by finding it in ``sys.modules``. ``tools/colab_leg.py`` copies this package into
the replica venv with a ``.pth`` line that imports it in every Python process there. Beside
it only the submodules that libraries import on Colab exist (``output``: JAX imports it), empty.
Nothing else of Colab is imitated; no other environment has it.
"""
