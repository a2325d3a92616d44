"""ssd_tiny on the built-in shapes data, trained from scratch: the CPU quickstart (about 11
minutes on 2 cores, VOC07 mAP 0.81). How the recipe was chosen: benchmarks/RESULTS.md."""

from ssd_jax.train import default_config


def get_config():
    config = default_config()
    config.model = "ssd_tiny"
    config.dataset = "shapes"
    config.batch_size = 16  # as sample-efficient as 32 here, with twice the updates
    config.max_boxes = 16  # shapes images hold at most 6 objects
    # ssd_tiny's grids are coarse for its box sizes: at IoU 0.5 an object matches few default boxes.
    config.match_iou_threshold = 0.4
    config.neg_pos_ratio = 2.0
    # A short schedule from scratch learns faster without zoom-out and crops; the photometric
    # distortion would take 40% of the input pipeline's CPU time. Flips stay.
    config.zoom_out_probability = 0.0
    config.crop_probability = 0.0
    config.photometric = False
    # From scratch: BatchNorm (folded into the convolutions when saved) and Adam with a short warm-up.
    config.batch_norm = True
    config.num_steps = 2000
    config.optimizer = "adam"
    config.learning_rate = 4e-3
    config.warmup_steps = 50
    config.lr_boundaries = (1500, 1800)
    config.weight_decay = 5e-4
    config.log_every = 25
    # Evaluations and saves cost 10 to 15 s each: twice in the run keeps it short.
    config.checkpoint_every = 1000
    config.eval_every = 1000
    config.eval_batch_size = 50
    return config
