"""Reading image files into uint8 RGB arrays (PIL and numpy only: no TensorFlow, quick to import)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

# Pillow's modes of greyscale images with more than 8 bits per sample: 16-bit PNGs open as 'I;16'
# (older Pillow: 'I'), 16-bit TIFFs as 'I;16' or 'I;16B'. 'I' (int32) is read as 16-bit samples too.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether the file name has one of the image extensions (``IMAGE_EXTENSIONS``, any case)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def to_rgb8(image: Image.Image) -> np.ndarray:
    """A PIL image of any mode -> uint8 RGB [H, W, 3].

    16-bit greyscale is scaled to 8 bits (65535 -> 255, dividing by 257): Pillow's own
    ``convert('RGB')`` clips it, which turns everything above 255 of 65535 white. Alpha is dropped.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        samples = np.clip(np.asarray(image).astype(np.float64), 0, 65535)
        grey = np.round(samples / 257).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"), np.uint8)


def read_image(path: str | os.PathLike, *, exif_orientation: bool = True) -> np.ndarray:
    """Decodes an image file to uint8 RGB [H, W, 3]; raises ``OSError`` if it is missing or corrupt,
    ``ValueError`` if it is too large for Pillow's decompression-bomb check.

    ``exif_orientation``: turn the picture upright as its EXIF orientation tag says, as image
    viewers show it (phones store portrait photos as landscape pixels with such a tag). Readers of
    annotated data sets pass False: VOC and COCO boxes index the pixels as stored, as TFDS decodes
    them.
    """
    try:
        image = Image.open(path)
    except Image.DecompressionBombError as error:  # not an OSError: callers that skip bad files must see it
        raise ValueError(f"{path}: {error}") from error
    with image:
        image.load()  # decodes fully: a truncated file fails here, not later
        if exif_orientation:
            image = ImageOps.exif_transpose(image)
        return to_rgb8(image)
