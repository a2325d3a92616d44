"""Drawing boxes on images, for people to look at (PIL only)."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def class_color(class_id: int) -> tuple[int, int, int]:
    """A bright colour per class, stable across pictures (golden-ratio hue steps)."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(image, boxes, classes, scores=None, class_names=None, *, width: int = 2) -> Image.Image:
    """Draws normalised xyxy ``boxes`` [N, 4] with class names (and scores) on ``image``.

    Args:
      image: uint8 [H, W, 3] RGB array or a PIL image.
      classes: [N] ints, 1..C-1 (0 = background is skipped).
      scores: optional [N] floats printed after the name.
      class_names: optional names of classes 1..C-1 (index k - 1 for class k).
    """
    picture = image.copy().convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(
        np.asarray(image, np.uint8))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    size = np.array(picture.size * 2, np.float32)  # (W, H, W, H)
    for i, (box, cls) in enumerate(zip(np.asarray(boxes, np.float32), np.asarray(classes))):
        if cls <= 0:
            continue
        x0, y0, x1, y1 = (box * size).tolist()
        color = class_color(int(cls))
        draw.rectangle([x0, y0, x1, y1], outline=color, width=width)
        name = class_names[cls - 1] if class_names is not None and cls - 1 < len(class_names) else str(int(cls))
        text = name if scores is None else f"{name} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), text, font=font)
        label_top = max(y0 - (bottom - top) - 2, 0)
        draw.rectangle([x0, label_top, x0 + (right - left) + 4, label_top + (bottom - top) + 2], fill=color)
        draw.text((x0 + 2, label_top), text, fill=(0, 0, 0), font=font)
    return picture


def grid(pictures: list[Image.Image], columns: int = 4, gap: int = 4) -> Image.Image:
    """Tiles pictures of any sizes into one image, row by row."""
    columns = max(1, min(columns, len(pictures)))
    rows = -(-len(pictures) // columns)
    cell_w = max(p.width for p in pictures)
    cell_h = max(p.height for p in pictures)
    sheet = Image.new("RGB", (columns * cell_w + (columns - 1) * gap, rows * cell_h + (rows - 1) * gap), "white")
    for i, picture in enumerate(pictures):
        sheet.paste(picture, ((i % columns) * (cell_w + gap), (i // columns) * (cell_h + gap)))
    return sheet


def image_detections(detections, index: int, min_score: float = 0.0):
    """Image ``index``'s detections scoring >= ``min_score`` -> numpy (boxes [N, 4], scores [N], classes [N])."""
    n = int(detections.num_detections[index])
    scores = np.asarray(detections.scores[index, :n])
    keep = scores >= min_score
    return np.asarray(detections.boxes[index, :n])[keep], scores[keep], np.asarray(detections.classes[index, :n])[keep]


def detection_sheet(detections, images, class_names=None, *, min_score: float = 0.5,
                    columns: int = 4) -> Image.Image:
    """A grid of ``images`` [B, H, W, 3] with their ``Detections`` scoring >= ``min_score`` drawn."""
    pictures = []
    for b, image in enumerate(np.asarray(images)):
        boxes, scores, classes = image_detections(detections, b, min_score)
        pictures.append(draw_boxes(image, boxes, classes, scores, class_names))
    return grid(pictures, columns=columns)
