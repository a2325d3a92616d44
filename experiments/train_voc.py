r"""Trains SSD300 on VOC07+12 with the paper's recipe: experiments/train.py with configs/voc_ssd300.py.

  python experiments/train_voc.py --accel=gpu --workdir=runs/voc --config.data_dir=~/tensorflow_datasets \
      --config.init_backbone=ckpt/vgg16
  python experiments/train_voc.py --accel=cpu --dataset=shapes --workdir=runs/shapes   # the CPU quickstart

Every flag of experiments/train.py works here (--dataset, --config, --config.FIELD, --show_config).
"""

import train_lib
from absl import flags

if __name__ == "__main__":
    train_lib.define_config_flag("voc_ssd300.py")
    flags.adopt_module_key_flags(train_lib)  # --help lists --config, --dataset, --accel, --workdir, ... here
    train_lib.main()
