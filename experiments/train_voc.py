r"""Trains SSD300 on VOC07+12 (the paper's recipe), or ssd_tiny on the built-in shapes data.

  python experiments/train_voc.py --accel=gpu --workdir=runs/voc --config.data_dir=~/tensorflow_datasets
  python experiments/train_voc.py --accel=cpu --dataset=shapes --workdir=runs/shapes   # minutes on a CPU
  python experiments/train_voc.py --accel=gpu --workdir=runs/voc --config.init_backbone=ckpt/vgg16 \
      --config.compute_dtype=bfloat16

Checkpoints every config.checkpoint_every steps (and on SIGTERM/SIGINT, then exits with 130 or
143); running the same command again resumes where it stopped. A workdir holds one run: a
command whose config differs from it (other than in num_steps, intervals or data_dir) stops
before writing anything. TensorBoard: tensorboard --logdir WORKDIR/tensorboard.
--show_config prints the config's fields.
"""

from __future__ import annotations

import train_lib
from absl import app, flags, logging

DATASET = flags.DEFINE_enum("dataset", "voc", ["voc", "shapes", "shapes_tiny"],
                            "'voc' (the config's recipe) or the built-in 'shapes' with the shapes_tiny config.")
CONFIG = train_lib.define_config_flag("voc_ssd300.py")
flags.adopt_module_key_flags(train_lib)  # --help lists --accel, --workdir, --config, ... here


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = CONFIG.value
    if DATASET.value != "voc" and config.dataset == "voc":  # --dataset=shapes without a --config file
        import configs.shapes_tiny as shapes_tiny
        from ml_collections import config_flags

        config = shapes_tiny.get_config()
        config.dataset = DATASET.value
        # The --config.FIELD=VALUE overrides were applied to the default file's config: apply them here.
        config.update_from_flattened_dict(config_flags.get_override_values(flags.FLAGS["config"]))
    workdir = train_lib.WORKDIR.value or f"runs/{config.dataset}_{config.model}"
    train_lib.run(config, workdir, after_training=draw_test_detections)


def draw_test_detections(config, workdir: str, count: int = 12) -> None:
    """Draws the trained model's detections on the first test images -> WORKDIR/detections.png
    (only when the run evaluates: a test split is then known to be there)."""
    import os

    if not config.eval_every:
        return

    import ssd_jax
    from ssd_jax import checkpoint, visualize
    from ssd_jax.data import pipeline

    params, model_config = checkpoint.load_params(os.path.join(workdir, "params"))
    source = pipeline.tfds_source(config.dataset, "eval", data_dir=config.get("data_dir"))
    batch = next(pipeline.as_numpy(pipeline.eval_dataset(source, batch_size=count,
                                                         image_size=model_config.image_size)))
    detections = ssd_jax.detect(params, batch["image"], config=model_config)
    sheet = visualize.detection_sheet(detections, batch["image"], pipeline.DATASETS[config.dataset].class_names)
    sheet.save(os.path.join(workdir, "detections.png"))


if __name__ == "__main__":
    app.run(main)
