"""Class names and id maps of the supported data sets (no heavy imports: usable anywhere).

Our ids are contiguous: dataset class k (0-based, in the order below) is id k + 1, 0 is background.
"""

VOC_CLASS_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                   "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
                   "train", "tvmonitor")

# The built-in synthetic data set (ssd_jax.data.shapes).
SHAPES_CLASS_NAMES = ("circle", "square", "triangle", "star", "hexagon")

# COCO's 80 category ids: 1..90 without 12, 26, 29, 30, 45, 66, 68, 69, 71 and 83.
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))

COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
"""COCO category id of our class k is COCO_CATEGORY_IDS[k - 1]; TFDS ``coco`` labels follow this order."""


def names_for_class_count(num_classes: int) -> tuple[str, ...] | None:
    """The names of classes 1..C-1 of the known data set with ``num_classes`` classes (background
    included): VOC 21, COCO 81, torchvision's COCO layout 91 (a slot per category id, unused ids
    named by their number), shapes 6; None for any other count. For weights that carry no names."""
    if num_classes == 91:
        names = [str(k) for k in range(1, 91)]
        for category, name in zip(COCO_CATEGORY_IDS, COCO_CLASS_NAMES):
            names[category - 1] = name
        return tuple(names)
    return {len(VOC_CLASS_NAMES) + 1: VOC_CLASS_NAMES, len(COCO_CLASS_NAMES) + 1: COCO_CLASS_NAMES,
            len(SHAPES_CLASS_NAMES) + 1: SHAPES_CLASS_NAMES}.get(num_classes)
