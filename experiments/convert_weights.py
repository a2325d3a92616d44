r"""Converts published SSD weights (torchvision, amdegroot, NVIDIA, Caffe) or ImageNet backbones
into an ssd_jax parameter checkpoint.

Examples:
  # torchvision's COCO model (ssd300_vgg16_coco-b556d3b4.pth), 91 classes:
  python experiments/convert_weights.py --format=torchvision \
      --input=ssd300_vgg16_coco-b556d3b4.pth --output=checkpoints/ssd300_torchvision_coco
  # an amdegroot-style VOC checkpoint (ssd300_mAP_77.43_v2.pth), BGR -> RGB:
  python experiments/convert_weights.py --format=amdegroot --input=ssd300_mAP_77.43_v2.pth \
      --output=checkpoints/ssd300_voc
  # NVIDIA DeepLearningExamples' SSD300 on ResNet-50 (a main.py checkpoint, or torch hub's
  # nvidia_ssd weights), 81 COCO classes, BatchNorms folded:
  python experiments/convert_weights.py --format=nvidia --input=nvidia_ssdpyt_amp_200703.pt \
      --output=checkpoints/ssd300_resnet50_coco
  # torchvision's SSDLite (ssdlite320_mobilenet_v3_large_coco-a79551df.pth), BatchNorms folded:
  python experiments/convert_weights.py --format=torchvision \
      --input=ssdlite320_mobilenet_v3_large_coco-a79551df.pth --output=checkpoints/ssdlite320_coco
  # ImageNet VGG16 with the reduced fc6/fc7 (vgg16_reducedfc.pth, Caffe BGR) for training:
  python experiments/convert_weights.py --format=vgg16 --bgr --input=vgg16_reducedfc.pth \
      --output=checkpoints/vgg16_reducedfc
  # a Caffe SSD: weiliu89's VGG16 SSD300, or OpenCV's res10 face detector (BGR mean 104, 177, 123):
  python experiments/convert_weights.py --format=caffe --prototxt=deploy.prototxt \
      --input=res10_300x300_ssd_iter_140000.caffemodel --mean_bgr=104,177,123 --class_names=face \
      --output=checkpoints/res10_faces
  # torchvision's ImageNet ResNet-50 / MobileNetV3-Large as the backbone of ssd300_resnet50 /
  # ssdlite320_mobilenet_v3_large_full (train with --config.init_backbone=DIR):
  python experiments/convert_weights.py --format=resnet50 --input=resnet50-11ad3fa6.pth \
      --output=checkpoints/resnet50_backbone

The input may be .pth (read with torch.load(weights_only=True); needs torch), .npz or
.safetensors. The output directory holds config.json and an orbax checkpoint; load it with
``ssd_jax.checkpoint.load_params(DIR)`` (SSD) or ``load_tree(DIR)`` (a VGG16 backbone).
"""

from __future__ import annotations

import sys

import jax
import numpy as np
from absl import app, flags, logging

from ssd_jax import checkpoint, classes, configs, weights
from ssd_jax.models import base_networks

# An SSD of a published layout, or the ImageNet weights of a base network (those that declare an import).
IMAGENET_FORMATS = tuple(kind for kind in base_networks.kinds() if base_networks.get(kind).imagenet_import)
FORMAT = flags.DEFINE_enum("format", None, [*weights.SSD_FORMATS, *IMAGENET_FORMATS],
                           "Layout of the input weights: an SSD (" + ", ".join(weights.SSD_FORMATS) + ") or a base "
                           "network's ImageNet weights (" + ", ".join(IMAGENET_FORMATS) + ").")
PROTOTXT = flags.DEFINE_string("prototxt", None, "caffe only: the deploy prototxt of --input (a .caffemodel).")
MEAN_BGR = flags.DEFINE_list("mean_bgr", None, "caffe only: the BGR mean the model was trained with (default: "
                             "the prototxt's transform_param, else weiliu89's 104,117,123).")
CLASS_NAMES = flags.DEFINE_list("class_names", None, "Names of classes 1..C-1, stored with the checkpoint "
                                "(default: COCO's or VOC's when the class count is theirs).")
INPUT = flags.DEFINE_string("input", None, "Weight file: .pth, .pt, .npz or .safetensors (Caffe: .caffemodel).")
OUTPUT = flags.DEFINE_string("output", None, "Directory to write the ssd_jax checkpoint to.")
CONFIG = flags.DEFINE_string("config", None, "Preset to convert into (default: the layout's own: "
                             "ssd300_torchvision or ssdlite320_mobilenet_v3_large for torchvision, ssd300 with "
                             "amdegroot's clamped priors and Detect for amdegroot, ssd300_resnet50 for nvidia).")
BGR = flags.DEFINE_bool("bgr", False, "vgg16 only: the weights were trained on BGR input (Caffe).")
TORCHVISION_NORM = flags.DEFINE_bool(
    "torchvision_normalization", False,
    "vgg16 only: the weights expect torchvision's ImageNet normalisation (mean 0.485/0.456/0.406, "
    "std 0.229/0.224/0.225 on [0, 1] input); fold it into conv1_1.")
OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing checkpoint at --output.")


def save_ssd(params, config) -> None:
    names = CLASS_NAMES.value or classes.names_for_class_count(config.num_classes)  # COCO / VOC by count
    if names and len(names) != config.num_classes - 1:
        raise ValueError(f"--class_names has {len(names)} names; the model has {config.num_classes - 1} classes")
    checkpoint.save_params(OUTPUT.value, params, config, metadata={"class_names": list(names)} if names else None,
                           overwrite=OVERWRITE.value)
    count = sum(np.size(a) for a in jax.tree.leaves(params))
    print(f"wrote {config.name} ({config.num_classes} classes, {count:,} parameters) to {OUTPUT.value}")


def imagenet_options() -> dict:
    """The ImageNet import's options given on the command line (only VGG16's take any)."""
    options = {}
    if BGR.value:
        options["bgr"] = True
    if TORCHVISION_NORM.value:
        options.update(input_mean=(0.485, 0.456, 0.406), input_std=(0.229, 0.224, 0.225))
    return options


def convert_imagenet(kind: str, state_dict) -> None:
    network = base_networks.get(kind)
    try:
        tree = network.imagenet_import(state_dict, **imagenet_options())
    except TypeError as error:  # an option that this network's import does not take
        raise ValueError(f"--bgr and --torchvision_normalization apply to vgg16's ImageNet weights, not to "
                         f"{kind}'s ({error})") from error
    layers = sorted(tree["backbone"])
    checkpoint.save_params(OUTPUT.value, tree, metadata={"kind": f"{kind}_backbone", "layers": layers},
                           overwrite=OVERWRITE.value)
    print(f"wrote the {kind} base network's ImageNet weights ({len(layers)} layers) to {OUTPUT.value}")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes
    if FORMAT.value == "caffe":
        if not PROTOTXT.value:
            raise ValueError("--format=caffe needs --prototxt (the deploy prototxt of the caffemodel)")
        mean = tuple(float(m) for m in MEAN_BGR.value) if MEAN_BGR.value else None
        if mean is not None and len(mean) != 3:
            raise ValueError(f"--mean_bgr needs three numbers (B, G, R), got {MEAN_BGR.value}")
        params, config = weights.from_caffe(PROTOTXT.value, INPUT.value, mean_bgr=mean)
        save_ssd(params, config)
        return
    state_dict = weights.load_state_dict(INPUT.value)
    print(f"read {len(state_dict)} arrays, {sum(a.size for a in state_dict.values()):,} values, from {INPUT.value}")
    if FORMAT.value in IMAGENET_FORMATS:
        convert_imagenet(FORMAT.value, state_dict)
        return
    importer, config_of = weights.STATE_DICT_IMPORTS[FORMAT.value]
    config = config_of(state_dict)
    if CONFIG.value:
        config = configs.get(CONFIG.value, num_classes=config.num_classes)
    save_ssd(importer(state_dict, config), config)


if __name__ == "__main__":
    flags.mark_flags_as_required(["format", "input", "output"])
    try:
        app.run(main)
    # A missing, unreadable or unfitting weight file, an unknown --config, an existing --output:
    # the message names the problem, a traceback would only hide it.
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:  # CaffeImportError too
        sys.exit(f"error: {error}")
