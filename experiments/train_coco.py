r"""Trains SSD300 on COCO 2017 (the paper's COCO recipe).

  python experiments/train_coco.py --accel=gpu --workdir=runs/coco --config.data_dir=~/tensorflow_datasets
"""

from __future__ import annotations

import train_lib
from absl import app, flags, logging

CONFIG = train_lib.define_config_flag("coco_ssd300.py")
flags.adopt_module_key_flags(train_lib)  # --help lists --accel, --workdir, --config, ... here


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    train_lib.run(CONFIG.value, train_lib.WORKDIR.value or "runs/coco_ssd300")


if __name__ == "__main__":
    app.run(main)
