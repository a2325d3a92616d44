"""The shapes written as files, in the layouts users' own labelled data comes in: a VOC folder
(``write_voc_folder``) and COCO instances files with image folders (``write_coco_json``), with
this data set's class names and, in the json, non-contiguous category ids, to test and measure
the readers of such folders (``experiments/make_shapes_data.py``)."""

from __future__ import annotations

import collections
import json
import math
import numbers
import os
import shutil
import xml.etree.ElementTree as ElementTree
from typing import NamedTuple

import numpy as np

from ssd_jax import files
from ssd_jax.data.shapes.generate import CLASS_NAMES, compose, encode_jpeg, polygon_box

# # Image k (1-based, named `file_stem(k)`) is drawn by `file_example_rng(seed, k)`, the same in
# both layouts, and so is the split, so a VOC folder and a COCO json of one seed hold the same
# images and boxes. Per-object flags come from a stream of their own, so changing their rate
# leaves the images alone.

FILE_CATEGORY_IDS = (3, 7, 11, 17, 42)
"""COCO category id of CLASS_NAMES[k] in `write_coco_json`: not 1..K, so that readers must map ids."""

DIFFICULT_FRACTION = 0.05  # of the objects of a VOC folder, marked <difficult>1</difficult>
CROWD_FRACTION = 0.03      # of the objects of a COCO json, marked iscrowd 1
COCO_DECIMALS = 2          # of COCO's float boxes and areas, as in COCO's own files
VOC_LAYOUT = ('Annotations', 'ImageSets', 'JPEGImages')
COCO_LAYOUT = ('annotations', 'train2017', 'val2017')
MARKER = 'ssd_jax_shapes.json'  # written last into a folder of shapes files: the writer's summary


class FileExample(NamedTuple):
    """One image of a folder, with its objects in pixels."""

    stem: str              # file name without extension, e.g. 'shape_000001'
    number: int            # k in 1..count, the image's COCO id
    image: np.ndarray      # uint8 [H, W, 3]
    boxes: np.ndarray      # float64 [N, 4] (x0, y0, x1, y1) continuous pixels, within [0, W] x [0, H]
    labels: np.ndarray     # int64 [N] index into CLASS_NAMES
    areas: np.ndarray      # float64 [N] polygon areas in pixels (occlusion ignored)
    flag_draws: np.ndarray  # float64 [N] uniform in [0, 1): an object is flagged when below the rate


def file_stem(number):
    """Image `number` (1-based) -> its file stem, 'shape_000001' for 1."""
    return f'shape_{number:06d}'


def file_example_rng(seed, number):
    """The generator that draws image `number` (1-based) of the folders written with `seed`."""
    return np.random.default_rng([seed, number])


def held_out_numbers(seed, count, test_fraction):
    """The image numbers (of 1..count) in the test split: round(count * test_fraction) of them,
    drawn at random for `seed`. Returns a sorted list of ints."""
    num_test = round(count * test_fraction)
    return sorted(int(k) + 1 for k in np.random.default_rng([seed, 0]).permutation(count)[:num_test])


def polygon_area(polygon):
    """Vertices [K, 2] (x, y) of a simple polygon -> its area (shoelace formula), same units squared."""
    x, y = polygon.T
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def file_example(seed, number):
    """Draws image `number` (1-based) of the folders of `seed` -> `FileExample`."""
    composition = compose(file_example_rng(seed, number))
    height, width = composition.image.shape[:2]
    boxes = np.stack([polygon_box(p) for p in composition.polygons])
    return FileExample(
        stem=file_stem(number),
        number=number,
        image=composition.image,
        boxes=np.clip(boxes, 0.0, [width, height, width, height]),
        labels=composition.labels,
        areas=np.array([polygon_area(p) for p in composition.polygons]),
        flag_draws=np.random.default_rng([seed, number, 1]).random(len(boxes)),
    )


def voc_pixel_box(box, width, height):
    """Continuous pixel box (x0, y0, x1, y1) -> VOC's integer (xmin, ymin, xmax, ymax).

    VOC's corners are the 1-based, inclusive indices of the first and last pixel the box touches
    (pixel i covers [i, i + 1) in 0-based terms), clipped to the image. Readers take the box back as
    (xmin - 1, ymin - 1, xmax, ymax): each side moves outwards by less than 1 px.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    return (max(math.floor(x0) + 1, 1), max(math.floor(y0) + 1, 1),
            min(math.ceil(x1), width), min(math.ceil(y1), height))


def _text_element(parent, tag, text):
    element = ElementTree.SubElement(parent, tag)
    element.text = str(text)
    return element


def voc_annotation_xml(filename, width, height, names, pixel_boxes, difficult):
    """One VOC annotation file's text.

    Args:
      filename: the image's file name, e.g. 'shape_000001.jpg'.
      width, height: the image's size in pixels.
      names: [N] class names; pixel_boxes: [N] VOC integer boxes (`voc_pixel_box`); difficult: [N] bools.
    """
    annotation = ElementTree.Element('annotation')
    _text_element(annotation, 'folder', 'shapes')
    _text_element(annotation, 'filename', filename)
    _text_element(ElementTree.SubElement(annotation, 'source'), 'database', 'ssd_jax synthetic shapes')
    size = ElementTree.SubElement(annotation, 'size')
    for tag, value in (('width', width), ('height', height), ('depth', 3)):
        _text_element(size, tag, value)
    _text_element(annotation, 'segmented', 0)
    for name, box, hard in zip(names, pixel_boxes, difficult):
        obj = ElementTree.SubElement(annotation, 'object')
        _text_element(obj, 'name', name)
        _text_element(obj, 'pose', 'Unspecified')
        _text_element(obj, 'truncated', 0)  # every shape lies inside its image
        _text_element(obj, 'difficult', int(hard))
        bndbox = ElementTree.SubElement(obj, 'bndbox')
        for tag, value in zip(('xmin', 'ymin', 'xmax', 'ymax'), box):
            _text_element(bndbox, tag, value)
    ElementTree.indent(annotation, space='\t')  # VOC's own files are tab-indented
    return ElementTree.tostring(annotation, encoding='unicode') + '\n'


def coco_bbox(box, width, height):
    """Continuous pixel box (x0, y0, x1, y1) -> COCO's [x, y, w, h], float pixels to COCO_DECIMALS.

    Rounded outwards, so the box still contains the object, and kept within the image.
    """
    scale = 10**COCO_DECIMALS
    x0, y0 = (math.floor(float(v) * scale) / scale for v in box[:2])
    x1 = min(math.ceil(float(box[2]) * scale) / scale, width)
    y1 = min(math.ceil(float(box[3]) * scale) / scale, height)
    return [x0, y0, round(x1 - x0, COCO_DECIMALS), round(y1 - y0, COCO_DECIMALS)]


def _check_file_options(count, seed, test_fraction, jpeg_quality):
    def is_int(value):
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    if not is_int(count) or count < 1:
        raise ValueError(f'count must be a positive integer, got {count!r}')
    if not is_int(seed) or seed < 0:
        raise ValueError(f'seed must be a non-negative integer, got {seed!r}')
    if not isinstance(test_fraction, numbers.Real) or not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f'test_fraction must be in [0, 1], got {test_fraction!r}')
    if not is_int(jpeg_quality) or not 1 <= jpeg_quality <= 100:
        raise ValueError(f'jpeg_quality must be an integer in 1..100, got {jpeg_quality!r}')


def _prepare_root(root, layout, overwrite):
    """Creates `root`; refuses a non-empty one unless `overwrite`, which removes `layout` (the
    entries a writer makes) from it and leaves anything else, but only if those entries are a
    writer's own (the MARKER file says so): a user's folders of the same names are never removed.
    Returns root as a str."""
    root = os.fspath(root)
    if os.path.exists(root) and not os.path.isdir(root):
        raise NotADirectoryError(f'{root} exists and is not a directory')
    os.makedirs(root, exist_ok=True)
    entries = sorted(os.listdir(root))
    if entries and not overwrite:
        raise FileExistsError(
            f'{root} is not empty (it holds {len(entries)} entries, e.g. {entries[0]!r}): write to a new or empty '
            f'directory, or pass overwrite=True (--overwrite) to replace its {", ".join(layout)}')
    present = [name for name in (*layout, MARKER) if os.path.lexists(os.path.join(root, name))]
    if present and not files.is_our_json(os.path.join(root, MARKER)):
        raise FileExistsError(
            f'{root} holds {", ".join(present)} that this writer did not make (no {MARKER} of ssd_jax there): they '
            f'are never replaced. Write to a new or empty directory')
    for name in (*layout, MARKER):
        path = os.path.join(root, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
    return root


def _write_marker(root, summary):
    """Marks `root`'s folders as this writer's (what `overwrite` may replace) -> the summary."""
    files.write_json_atomically(os.path.join(root, MARKER), {'producer': files.PRODUCER, **summary})
    return summary


def _write_bytes(path, data):
    with open(path, 'wb') as f:
        f.write(data)


def _write_text(path, text):
    with open(path, 'w', encoding='utf-8', newline='\n') as f:
        f.write(text)


def write_voc_folder(root, count, *, seed=0, test_fraction=0.25, split_files=True, jpeg_quality=90,
                     overwrite=False):
    """Writes `count` shapes images as a VOC folder; the same seed writes the same content.

    Layout (stems shape_000001 .. shape_{count:06d}):
      root/JPEGImages/<stem>.jpg
      root/Annotations/<stem>.xml            VOC XML; about DIFFICULT_FRACTION of objects difficult
      root/ImageSets/Main/trainval.txt      one stem a line (only when split_files)
      root/ImageSets/Main/test.txt          round(count * test_fraction) stems, drawn at random

    Args:
      root: directory to write; created, and refused if not empty unless `overwrite`.
      count: number of images, >= 1.
      seed: non-negative integer; fixes the images, the objects' difficult flags and the split.
      test_fraction: fraction of the images in test.txt, in [0, 1].
      split_files: whether to write ImageSets/Main (without it readers choose their own split).
      jpeg_quality: Pillow JPEG quality, 1..100 (no chroma subsampling).
      overwrite: write into a non-empty `root`, replacing its Annotations, ImageSets and JPEGImages.

    Returns:
      {'format': 'voc', 'root', 'images': count, 'splits': {'trainval': n, 'test': n} (empty without
      split files), 'objects': {class name: n}, 'difficult': n}.
    """
    _check_file_options(count, seed, test_fraction, jpeg_quality)
    root = _prepare_root(root, VOC_LAYOUT, overwrite)
    image_dir, annotation_dir = os.path.join(root, 'JPEGImages'), os.path.join(root, 'Annotations')
    os.makedirs(image_dir)
    os.makedirs(annotation_dir)
    test = set(held_out_numbers(seed, count, test_fraction))
    splits = {'trainval': [], 'test': []}
    objects = collections.Counter()
    num_difficult = 0
    for number in range(1, count + 1):
        example = file_example(seed, number)
        height, width = example.image.shape[:2]
        names = [CLASS_NAMES[label] for label in example.labels]
        difficult = example.flag_draws < DIFFICULT_FRACTION
        pixel_boxes = [voc_pixel_box(box, width, height) for box in example.boxes]
        _write_bytes(os.path.join(image_dir, f'{example.stem}.jpg'), encode_jpeg(example.image, jpeg_quality))
        _write_text(os.path.join(annotation_dir, f'{example.stem}.xml'),
                    voc_annotation_xml(f'{example.stem}.jpg', width, height, names, pixel_boxes, difficult))
        splits['test' if number in test else 'trainval'].append(example.stem)
        objects.update(names)
        num_difficult += int(difficult.sum())
    if split_files:
        main = os.path.join(root, 'ImageSets', 'Main')
        os.makedirs(main)
        for split, stems in splits.items():
            _write_text(os.path.join(main, f'{split}.txt'), ''.join(f'{stem}\n' for stem in stems))
    return _write_marker(root, {
        'format': 'voc',
        'root': root,
        'images': count,
        'splits': {split: len(stems) for split, stems in splits.items()} if split_files else {},
        'objects': {name: objects[name] for name in CLASS_NAMES},
        'difficult': num_difficult,
    })


def write_coco_json(root, count, *, seed=0, test_fraction=0.25, jpeg_quality=90, overwrite=False):
    """Writes `count` shapes images in COCO's layout; the same seed writes the same content.

    Layout (file names shape_000001.jpg ..; image id k for shape_{k:06d}):
      root/train2017/<stem>.jpg
      root/val2017/<stem>.jpg                       round(count * test_fraction) images, drawn at random
      root/annotations/instances_train2017.json
      root/annotations/instances_val2017.json

    Each json holds 'images' (id, file_name, width, height), 'annotations' (id, unique over both
    files; image_id; category_id; bbox [x, y, w, h] float pixels; area, the shape's polygon area;
    iscrowd, 1 for about CROWD_FRACTION of them; segmentation []) and 'categories' (id, name) with
    the ids FILE_CATEGORY_IDS. The images and split equal `write_voc_folder`'s for the same seed.

    Args:
      root: directory to write; created, and refused if not empty unless `overwrite`.
      count: number of images, >= 1.
      seed: non-negative integer; fixes the images, the crowd flags and the split.
      test_fraction: fraction of the images in val2017, in [0, 1].
      jpeg_quality: Pillow JPEG quality, 1..100 (no chroma subsampling).
      overwrite: write into a non-empty `root`, replacing its annotations, train2017 and val2017.

    Returns:
      {'format': 'coco', 'root', 'images': count, 'splits': {'train2017': n, 'val2017': n},
      'objects': {class name: n}, 'iscrowd': n, 'category_ids': {class name: id}}.
    """
    _check_file_options(count, seed, test_fraction, jpeg_quality)
    root = _prepare_root(root, COCO_LAYOUT, overwrite)
    for name in COCO_LAYOUT:
        os.makedirs(os.path.join(root, name))
    categories = [{'id': category_id, 'name': name, 'supercategory': 'shape'}
                  for category_id, name in zip(FILE_CATEGORY_IDS, CLASS_NAMES)]
    files = {split: {'info': {'description': f'ssd_jax synthetic shapes, seed {seed}', 'version': '1.0'},
                     'licenses': [], 'images': [], 'annotations': [], 'categories': categories}
             for split in ('train2017', 'val2017')}
    test = set(held_out_numbers(seed, count, test_fraction))
    objects = collections.Counter()
    num_crowd = num_annotations = 0
    for number in range(1, count + 1):
        example = file_example(seed, number)
        height, width = example.image.shape[:2]
        split = 'val2017' if number in test else 'train2017'
        _write_bytes(os.path.join(root, split, f'{example.stem}.jpg'), encode_jpeg(example.image, jpeg_quality))
        data = files[split]
        data['images'].append({'id': number, 'file_name': f'{example.stem}.jpg', 'width': width, 'height': height})
        crowd = example.flag_draws < CROWD_FRACTION
        for box, label, area, is_crowd in zip(example.boxes, example.labels, example.areas, crowd):
            num_annotations += 1
            data['annotations'].append({
                'id': num_annotations,
                'image_id': number,
                'category_id': FILE_CATEGORY_IDS[label],
                'bbox': coco_bbox(box, width, height),
                'area': round(float(area), COCO_DECIMALS),
                'iscrowd': int(is_crowd),
                'segmentation': [],
            })
            objects[CLASS_NAMES[label]] += 1
        num_crowd += int(crowd.sum())
    for split, data in files.items():
        _write_text(os.path.join(root, 'annotations', f'instances_{split}.json'),
                    json.dumps(data, separators=(',', ':')))
    return _write_marker(root, {
        'format': 'coco',
        'root': root,
        'images': count,
        'splits': {split: len(data['images']) for split, data in files.items()},
        'objects': {name: objects[name] for name in CLASS_NAMES},
        'iscrowd': num_crowd,
        'category_ids': dict(zip(CLASS_NAMES, FILE_CATEGORY_IDS)),
    })
