r"""The former name of experiments/detect.py, kept so that earlier commands still work: the same
flags and outputs.

  python experiments/detect_images.py --checkpoint=runs/shapes/params --out_dir=out/detections photo1.jpg photo2.png
"""

import os
import runpy

if __name__ == "__main__":
    runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "detect.py"), run_name="__main__")
