"""ssd_tiny on the built-in shapes data: trains on a 2-core CPU in minutes (the quickstart)."""

from ssd_jax.train import default_config


def get_config():
    config = default_config()
    config.model = "ssd_tiny"
    config.dataset = "shapes"
    config.batch_size = 32
    config.max_boxes = 16  # shapes images hold at most 6 objects
    config.num_steps = 1500
    # From scratch (no ImageNet backbone): Adam with a short warm-up converges far faster here
    # than the paper's SGD at 1e-3.
    config.optimizer = "adam"
    config.learning_rate = 1e-3
    config.warmup_steps = 100
    config.lr_boundaries = (1000, 1350)
    config.weight_decay = 5e-4
    config.log_every = 25
    config.checkpoint_every = 250
    config.eval_every = 250
    config.eval_batch_size = 50
    return config
