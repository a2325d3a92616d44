r"""Trains an SSD: any config file, any data set. The one training entry point (default: the
paper's SSD300 on VOC07+12, configs/voc_ssd300.py).

  python experiments/train.py --config=experiments/configs/voc_ssd300.py --accel=gpu --workdir=runs/voc
  python experiments/train.py --dataset=shapes --accel=cpu --workdir=runs/shapes   # the data set's recipe
  python experiments/train.py --dataset=voc --config.compute_dtype=bfloat16 --config.batch_size=64
  python experiments/train.py --dataset=shapes --show_config                      # every field of the config

--dataset=NAME picks the data set and, without --config, its recipe (voc: voc_ssd300.py, coco:
coco_ssd300.py, shapes and shapes_tiny: shapes_ssd_tiny.py); --config.FIELD=VALUE overrides any
field. Checkpoints every config.checkpoint_every steps and on SIGTERM/SIGINT (then exits with 130
or 143); the same command resumes where it stopped. A workdir holds one run: a config that
differs from it other than in num_steps, intervals or data_dir stops before writing anything.
TensorBoard: tensorboard --logdir WORKDIR/tensorboard.
"""

import train_lib
from absl import flags

if __name__ == "__main__":
    train_lib.define_config_flag("voc_ssd300.py")
    flags.adopt_module_key_flags(train_lib)  # --help lists --config, --dataset, --accel, --workdir, ... here
    train_lib.main()
