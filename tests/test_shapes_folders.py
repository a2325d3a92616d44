"""The shapes data set written as files: a VOC folder and a COCO json (ssd_jax.data.shapes)."""

import collections
import io
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from ssd_jax.data import shapes

SEED = 3
COUNT = 12
SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "make_shapes_data.py")


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc") / "shapes"
    return root, shapes.write_voc_folder(root, COUNT, seed=SEED)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco") / "shapes"
    return root, shapes.write_coco_json(root, COUNT, seed=SEED)


def generated(number):
    """Image `number` as the generator draws it: (image, boxes float [N, 4] xyxy pixels, labels)."""
    image, boxes, labels = shapes.generate_example(shapes.file_example_rng(SEED, number))
    height, width = image.shape[:2]
    return image, boxes.astype(np.float64) * [width, height, width, height], labels


def read_voc_xml(path):
    """-> (filename, (width, height), names [N], VOC boxes int [N, 4], difficult [N])."""
    root = ElementTree.parse(path).getroot()
    objects = root.findall("object")
    boxes = [[int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")] for obj in objects]
    return (root.findtext("filename"), (int(root.findtext("size/width")), int(root.findtext("size/height"))),
            [obj.findtext("name") for obj in objects], np.array(boxes).reshape(-1, 4),
            [int(obj.findtext("difficult")) for obj in objects])


def read_lines(path):
    return path.read_text().split()


def decoded(source):
    """A JPEG file (path) or JPEG bytes -> uint8 [H, W, 3]."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        return np.asarray(image.convert("RGB"))


def test_voc_boxes_read_back_with_voc_convention_contain_each_generated_shape(voc):
    root, summary = voc
    num_difficult, objects = 0, collections.Counter()
    for number in range(1, COUNT + 1):
        stem = f"shape_{number:06d}"
        image, boxes, labels = generated(number)
        filename, size, names, voc_boxes, difficult = read_voc_xml(root / "Annotations" / f"{stem}.xml")
        assert filename == f"{stem}.jpg" and size == (image.shape[1], image.shape[0])
        assert names == [shapes.CLASS_NAMES[label] for label in labels]
        # VOC's 1-based inclusive corners back to continuous pixels, as readers convert them.
        read_back = voc_boxes - np.array([1, 1, 0, 0])
        tolerance = 1e-3  # the generator's normalised boxes are float32
        assert np.all(read_back[:, :2] <= boxes[:, :2] + tolerance)
        assert np.all(read_back[:, 2:] >= boxes[:, 2:] - tolerance)
        assert np.all(np.abs(read_back - boxes) < 1 + tolerance)
        assert np.all(voc_boxes[:, :2] >= 1) and np.all(voc_boxes[:, :2] <= voc_boxes[:, 2:])
        assert np.all(voc_boxes[:, 2:] <= size)
        # The very image the generator drew, through the writer's JPEG encoding (quality 90).
        np.testing.assert_array_equal(decoded(root / "JPEGImages" / filename), decoded(shapes.encode_jpeg(image, 90)))
        num_difficult += sum(difficult)
        objects.update(names)
        assert set(difficult) <= {0, 1}
    assert summary["objects"] == {name: objects[name] for name in shapes.CLASS_NAMES}
    assert summary["difficult"] == num_difficult and 0 < num_difficult < 0.15 * objects.total()  # about 5%


def test_voc_split_files_partition_the_images_with_the_requested_fraction(voc, tmp_path):
    root, summary = voc
    stems = sorted(name[:-4] for name in os.listdir(root / "JPEGImages"))
    assert stems == sorted(name[:-4] for name in os.listdir(root / "Annotations")) == [
        f"shape_{k:06d}" for k in range(1, COUNT + 1)]
    trainval, test = (read_lines(root / "ImageSets" / "Main" / f"{split}.txt") for split in ("trainval", "test"))
    assert sorted(trainval + test) == stems and not set(trainval) & set(test)
    assert len(test) == round(0.25 * COUNT) and summary["splits"] == {"trainval": len(trainval), "test": len(test)}
    assert test != stems[-len(test):]  # drawn at random, not the last ones

    half = shapes.write_voc_folder(tmp_path / "half", 6, seed=SEED, test_fraction=0.5)
    assert len(read_lines(tmp_path / "half" / "ImageSets" / "Main" / "test.txt")) == 3
    assert half["splits"] == {"trainval": 3, "test": 3}

    unsplit = shapes.write_voc_folder(tmp_path / "unsplit", 2, seed=SEED, split_files=False)
    assert sorted(os.listdir(tmp_path / "unsplit")) == ["Annotations", "JPEGImages", shapes.MARKER]
    assert unsplit["splits"] == {}


def test_coco_json_loads_with_pycocotools_with_non_contiguous_ids_and_boxes_inside_images(coco):
    root, summary = coco
    annotation_ids, image_ids, crowd = [], [], 0
    for split in ("train2017", "val2017"):
        data = COCO(str(root / "annotations" / f"instances_{split}.json"))
        assert sorted(data.getCatIds()) == [3, 7, 11, 17, 42]
        assert [data.cats[i]["name"] for i in (3, 7, 11, 17, 42)] == list(shapes.CLASS_NAMES)
        assert sorted(os.listdir(root / split)) == sorted(info["file_name"] for info in data.imgs.values())
        for image_id, info in data.imgs.items():
            image, boxes, labels = generated(image_id)
            assert info["file_name"] == f"shape_{image_id:06d}.jpg"
            written = decoded(root / split / info["file_name"])
            np.testing.assert_array_equal(written, decoded(shapes.encode_jpeg(image, 90)))
            assert (info["height"], info["width"]) == image.shape[:2]
            anns = data.loadAnns(data.getAnnIds(imgIds=[image_id]))
            assert [ann["category_id"] for ann in anns] == [shapes.FILE_CATEGORY_IDS[label] for label in labels]
            bbox = np.array([ann["bbox"] for ann in anns])
            assert np.all(bbox[:, 2:] > 0) and np.all(bbox[:, :2] >= 0)
            assert np.all(bbox[:, 0] + bbox[:, 2] <= info["width"] + 1e-9)
            assert np.all(bbox[:, 1] + bbox[:, 3] <= info["height"] + 1e-9)
            xyxy = np.concatenate([bbox[:, :2], bbox[:, :2] + bbox[:, 2:]], axis=1)
            assert np.all(np.abs(xyxy - boxes) < 0.01 + 1e-3)  # rounded outwards to 2 decimals
            for ann in anns:
                assert 0 < ann["area"] <= ann["bbox"][2] * ann["bbox"][3] and ann["segmentation"] == []
                assert ann["iscrowd"] in (0, 1)
                crowd += ann["iscrowd"]
            annotation_ids += [ann["id"] for ann in anns]
            image_ids.append(image_id)
    assert sorted(image_ids) == list(range(1, COUNT + 1))
    assert sorted(annotation_ids) == list(range(1, len(annotation_ids) + 1))  # unique over both files
    assert summary["iscrowd"] == crowd and crowd < 0.15 * len(annotation_ids)
    assert sum(summary["objects"].values()) == len(annotation_ids)
    assert summary["splits"] == {"train2017": COUNT - round(0.25 * COUNT), "val2017": round(0.25 * COUNT)}


def test_voc_and_coco_of_one_seed_hold_the_same_images_and_split(voc, coco):
    (voc_root, _), (coco_root, _) = voc, coco
    test = read_lines(voc_root / "ImageSets" / "Main" / "test.txt")
    assert sorted(name[:-4] for name in os.listdir(coco_root / "val2017")) == sorted(test)
    for stem in test:
        voc_jpeg, coco_jpeg = voc_root / "JPEGImages" / f"{stem}.jpg", coco_root / "val2017" / f"{stem}.jpg"
        assert voc_jpeg.read_bytes() == coco_jpeg.read_bytes()


def test_same_seed_writes_identical_files_and_another_seed_does_not(voc, coco, tmp_path):
    (voc_root, voc_summary), (coco_root, coco_summary) = voc, coco
    again = shapes.write_voc_folder(tmp_path / "voc", COUNT, seed=SEED)
    assert {k: v for k, v in again.items() if k != "root"} == {k: v for k, v in voc_summary.items() if k != "root"}
    for folder in ("Annotations", "ImageSets/Main"):
        for name in os.listdir(voc_root / folder):
            assert (tmp_path / "voc" / folder / name).read_text() == (voc_root / folder / name).read_text()
    for name in os.listdir(voc_root / "JPEGImages"):
        first, second = voc_root / "JPEGImages" / name, tmp_path / "voc" / "JPEGImages" / name
        np.testing.assert_array_equal(decoded(first), decoded(second))

    shapes.write_coco_json(tmp_path / "coco", COUNT, seed=SEED)
    for name in os.listdir(coco_root / "annotations"):
        assert (tmp_path / "coco" / "annotations" / name).read_text() == (coco_root / "annotations" / name).read_text()
    for split in ("train2017", "val2017"):
        for name in os.listdir(coco_root / split):
            np.testing.assert_array_equal(decoded(tmp_path / "coco" / split / name), decoded(coco_root / split / name))
    assert coco_summary["category_ids"] == dict(zip(shapes.CLASS_NAMES, (3, 7, 11, 17, 42)))

    shapes.write_voc_folder(tmp_path / "other", 2, seed=SEED + 1)
    assert (tmp_path / "other" / "Annotations" / "shape_000001.xml").read_text() != (
        voc_root / "Annotations" / "shape_000001.xml").read_text()


def test_refuses_a_non_empty_directory_and_overwrite_replaces_only_its_own_folders(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    for write in (shapes.write_voc_folder, shapes.write_coco_json):
        with pytest.raises(FileExistsError, match="not empty.*overwrite=True"):
            write(root, 2)
    assert os.listdir(root) == ["notes.txt"]  # nothing written

    shapes.write_voc_folder(root, 5, overwrite=True)
    shapes.write_voc_folder(root, 2, overwrite=True)
    assert sorted(os.listdir(root / "Annotations")) == ["shape_000001.xml", "shape_000002.xml"]  # none stale
    assert (root / "notes.txt").read_text() == "mine"

    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        shapes.write_coco_json(tmp_path / "file", 2)


@pytest.mark.parametrize("options, message", [
    ({"count": 0}, "count"), ({"count": 2.0}, "count"), ({"seed": -1}, "seed"), ({"seed": True}, "seed"),
    ({"test_fraction": 1.5}, "test_fraction"), ({"test_fraction": float("nan")}, "test_fraction"),
    ({"jpeg_quality": 0}, "jpeg_quality")])
def test_bad_options_are_refused_before_anything_is_written(tmp_path, options, message):
    count = options.pop("count", 2)
    for write in (shapes.write_voc_folder, shapes.write_coco_json):
        with pytest.raises(ValueError, match=message):
            write(tmp_path / "out", count, **options)
    assert not (tmp_path / "out").exists()


def run_script(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300)


def test_script_writes_a_coco_json_and_help_lists_its_flags(tmp_path):
    out = run_script("--help")  # absl exits with status 1 after printing help
    for flag in ("--format", "--out", "--count", "--seed", "--test_fraction", "--[no]no_split_files", "--[no]overwrite",
                 "--jpeg_quality"):
        assert flag in out.stdout

    out = run_script("--format=coco", f"--out={tmp_path / 'coco'}", "--count=4", "--seed=2", "--test_fraction=0.5")
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["format"] == "coco" and summary["splits"] == {"train2017": 2, "val2017": 2}
    assert len(os.listdir(tmp_path / "coco" / "val2017")) == 2

    out = run_script("--format=coco", f"--out={tmp_path / 'refused'}", "--no_split_files")
    assert out.returncode != 0 and "voc only" in out.stderr and not (tmp_path / "refused").exists()
