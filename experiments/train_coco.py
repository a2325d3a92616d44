r"""Trains SSD300 on COCO 2017 (the paper's COCO recipe): experiments/train.py with configs/coco_ssd300.py.

  python experiments/train_coco.py --accel=gpu --workdir=runs/coco --config.data_dir=~/tensorflow_datasets

Every flag of experiments/train.py works here (--dataset, --config, --config.FIELD, --show_config).
"""

import train_lib
from absl import flags

if __name__ == "__main__":
    train_lib.define_config_flag("coco_ssd300.py")
    flags.adopt_module_key_flags(train_lib)  # --help lists --config, --dataset, --accel, --workdir, ... here
    train_lib.main()
