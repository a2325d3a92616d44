"""The paper's SSD300 on VOC07+12: batch 32, 120k steps, SGD lr 1e-3 x0.1 at 80k and 100k."""

from ssd_jax.train import default_config


def get_config():
    return default_config()
