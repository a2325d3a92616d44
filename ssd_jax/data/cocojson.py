"""COCO-format json files with their image folders: the ``cocojson`` data source.

Categories become classes 1..K in the order of their ids (their source ids travel with the
model, for results in the source's terms), or in the order of ``class_names``. Crowd regions
become ``difficult`` (ignored by the VOC metric, not trained on). Faults (an image entry without
id, an annotation of an image or category that is not listed, a malformed bbox) are counted
under their own names, with a warning naming the file and the entry (``index.SkipStats``).
"""

from __future__ import annotations

import collections
import json
import os

import numpy as np

from ssd_jax.data import sources
from ssd_jax.data.index import ImageIndex, SkipStats, require, upright_header

SPLIT_FIELDS = ("train_annotations", "train_images", "eval_annotations", "eval_images")


def open_coco_json(annotations: dict[str, str], images: dict[str, str], class_names=None):
    """Indexes COCO-format json files -> (class names, category ids, {'train', 'eval': ImageIndex}, skipped).

    ``annotations`` and ``images``: {split: path} for 'train', 'eval' or both. Categories become classes 1..K in
    the order of their ids (their source ids are returned, for results in the source's terms),
    or in the order of ``class_names``. Crowd regions become ``difficult`` (not trained on).
    """
    stats = SkipStats()
    loaded = {}
    for split in annotations:
        require(annotations[split], f"COCO annotation file of the {split} split")
        require(images[split], f"COCO image folder of the {split} split")
        try:
            with open(annotations[split]) as f:
                loaded[split] = json.load(f)
        except ValueError as error:
            raise ValueError(f"{annotations[split]} is not valid JSON ({error})") from error
        if not isinstance(loaded[split], dict) or "images" not in loaded[split]:
            raise ValueError(f"{annotations[split]} is not a COCO annotation file (no 'images' list)")
    categories = {c["id"]: c["name"] for data in loaded.values() for c in data.get("categories", [])
                  if isinstance(c, dict) and "id" in c and "name" in c}
    if class_names:
        by_name = {name: cat for cat, name in categories.items()}
        missing = [name for name in class_names if name not in by_name]
        if missing:
            raise ValueError(f"class names {missing} are not categories of the COCO files "
                             f"(they have {sorted(by_name)})")
        category_ids = tuple(by_name[name] for name in class_names)
    else:
        category_ids = tuple(sorted(categories))
    names = tuple(categories[c] for c in category_ids)
    contiguous = {cat: k + 1 for k, cat in enumerate(category_ids)}
    indexes = {split: _coco_index(annotations[split], images[split], data, contiguous, set(categories), stats)
               for split, data in loaded.items()}
    return names, category_ids, indexes, stats


def _coco_index(json_path: str, image_dir: str, data: dict, contiguous: dict[int, int], known_categories: set[int],
                stats: SkipStats) -> ImageIndex:
    """The ImageIndex of one COCO json. Faults are counted under their own names with a warning
    naming the file and the entry: an image entry without id or file name, an annotation of an
    image that is not listed, of a category that is not listed, or without a valid bbox."""
    images, by_image = [], collections.defaultdict(list)
    for position, info in enumerate(data["images"]):
        if not isinstance(info, dict) or not isinstance(info.get("id"), int) or not info.get("file_name"):
            stats.record("malformed_image_entries", json_path,
                         f"images[{position}] has no integer 'id' or no 'file_name': {str(info)[:120]}")
            continue
        images.append(info)
    listed = {info["id"] for info in images}
    for position, ann in enumerate(data.get("annotations", [])):
        entry = f"annotation {ann.get('id', f'at position {position}')}" if isinstance(ann, dict) else \
            f"annotations[{position}]"
        if not isinstance(ann, dict) or ann.get("image_id") not in listed:
            stats.record("orphan_annotations", json_path, f"{entry}: its image_id "
                         f"{ann.get('image_id') if isinstance(ann, dict) else None!r} is not in 'images'")
            continue
        by_image[ann["image_id"]].append((entry, ann))
    index = ImageIndex()
    for info in images:
        path = os.path.join(image_dir, str(info["file_name"]))
        header = upright_header(path, (info.get("width"), info.get("height")), stats)
        if header is None:
            continue
        width, height, orientation = header
        boxes, labels, crowd = [], [], []
        for entry, ann in by_image.get(info["id"], []):
            bbox = ann.get("bbox")
            if (not isinstance(bbox, list) or len(bbox) != 4
                    or not all(isinstance(v, int | float) and np.isfinite(v) for v in bbox)):
                stats.record("malformed_annotations", json_path, f"{entry}: bbox {bbox!r} is not [x, y, w, h]")
                continue
            if ann.get("category_id") not in known_categories:
                stats.record("unknown_categories", json_path,
                             f"{entry}: category_id {ann.get('category_id')!r} is not in 'categories'")
                continue
            if ann["category_id"] not in contiguous:  # a listed category left out by class_names
                stats["other_classes"] += 1
                continue
            x, y, w, h = bbox
            boxes.append((x / width, y / height, (x + w) / width, (y + h) / height))
            labels.append(contiguous[ann["category_id"]])
            crowd.append(bool(ann.get("iscrowd", 0)))
        index.add(path, boxes, labels, crowd, info["id"], orientation)
    index.clip_boxes(stats)
    return index


def _check(values) -> list[str]:
    """Training reads both splits: each of the four paths is needed."""
    return [f"{field}=None: the cocojson data set needs it" for field in SPLIT_FIELDS if not values.get(field)]


def _open(*, train_annotations=None, train_images=None, eval_annotations=None, eval_images=None,
          class_names=()) -> sources.Source:
    paths = {"train_annotations": train_annotations, "train_images": train_images,
             "eval_annotations": eval_annotations, "eval_images": eval_images}
    splits = [split for split in ("train", "eval") if paths[f"{split}_annotations"] or paths[f"{split}_images"]]
    missing = [key for key, value in paths.items() if not value and key.split("_")[0] in splits]
    if missing or not splits:
        missing = missing or list(paths)
        raise ValueError(f"the cocojson data set needs {', '.join(missing)} (--config.{missing[0]}=PATH, ...)")
    names, category_ids, indexes, stats = open_coco_json(
        {split: paths[f"{split}_annotations"] for split in splits},
        {split: paths[f"{split}_images"] for split in splits}, class_names or None)
    return sources.indexed_source("cocojson", names, {split: index.indexed() for split, index in indexes.items()},
                                  where=" and ".join(paths[f"{split}_annotations"] for split in splits),
                                  skipped=stats.summary(),
                                  num_objects={split: index.num_objects for split, index in indexes.items()},
                                  category_ids=category_ids, train_on_difficult=False)


sources.register(sources.DataSource(
    name="cocojson", open=_open, check=_check, description="your COCO json files and image folders",
    classes_from_data=True,
    fields={"train_annotations": sources.Field(help="cocojson: the training split's instances json"),
            "train_images": sources.Field(help="cocojson: the folder of its images"),
            "eval_annotations": sources.Field(help="cocojson: the evaluation split's instances json"),
            "eval_images": sources.Field(help="cocojson: the folder of its images")}))
