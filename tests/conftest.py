"""Test-session setup."""

# torchvision must be imported before TensorFlow: in the other order, loading triton's native
# library next to TensorFlow's crashes the process (torch 2.14.1 CUDA build, tensorflow-cpu 2.21).
try:
    import torchvision  # noqa: F401
except ImportError:  # the parity tests skip themselves without torch
    pass
