"""Stand-in for ``google.colab.output``: JAX imports it on Colab (``jax._src.debugger``).

Only the import must succeed; nothing here is called by the course.
"""
