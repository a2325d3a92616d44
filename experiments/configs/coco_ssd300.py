"""SSD300 on COCO 2017 (the paper's COCO recipe: 400k steps, lr x0.1 at 280k and 360k)."""

from ssd_jax.train import default_config


def get_config():
    config = default_config()
    config.model = "ssd300_coco"  # COCO default-box sizes (21 ... 315 pixels)
    config.dataset = "coco"
    config.num_steps = 400_000
    config.lr_boundaries = (280_000, 360_000)
    config.eval_every = 20_000
    return config
