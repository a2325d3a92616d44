r"""Trains SSD300 on COCO 2017 (the paper's COCO recipe).

  python experiments/train_coco.py --accel=gpu --workdir=runs/coco --config.data_dir=~/tensorflow_datasets
"""

from __future__ import annotations

import sys

import train_lib
from absl import app, logging

CONFIG = train_lib.define_config_flag("coco_ssd300.py")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    train_lib.start_jax(train_lib.ACCEL.value)
    from ssd_jax import train
    from ssd_jax.data import DatasetNotPreparedError

    workdir = train_lib.WORKDIR.value or "runs/coco_ssd300"
    try:
        last = train.train_and_evaluate(CONFIG.value, workdir)
    except (DatasetNotPreparedError, train.NonFiniteLossError) as error:
        sys.exit(f"error: {error}")
    print(f"done: coco/AP {last.get('coco/AP', float('nan')):.4f}; workdir {workdir}")


if __name__ == "__main__":
    app.run(main)
