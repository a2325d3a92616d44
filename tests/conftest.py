"""Test-session setup."""

import os
import tempfile

# torchvision must be imported before TensorFlow: in the other order, loading triton's native
# library next to TensorFlow's crashes the process (torch 2.14.1 CUDA build, tensorflow-cpu 2.21).
try:
    import torchvision  # noqa: F401
except ImportError:  # the parity tests skip themselves without torch
    pass

# One XLA compilation cache for the session and the scripts it starts: the tests compile the same
# tiny train step several times (in-process and in subprocesses).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "ssd_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
