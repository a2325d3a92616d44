"""Training, evaluating and detecting on your own labelled data from the command line: a VOC
folder and a COCO json with classes that are not VOC's, faults in them, EXIF orientation."""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps
from test_evaluation_trust import voc_eval_restated

from ssd_jax import checkpoint
from ssd_jax.data import canonical, index, shapes, sources, vocdir
from ssd_jax.evaluation import ImageDetections, ImageGroundTruth

EXPERIMENTS = os.path.join(os.path.dirname(__file__), os.pardir, "experiments")
RECIPE = os.path.join(EXPERIMENTS, "configs", "shapes_ssd_tiny.py")
SHORT = ["--config.batch_size=8", "--config.num_steps=30", "--config.checkpoint_every=30", "--config.eval_every=30",
         "--config.eval_batch_size=8", "--config.shuffle_buffer=16", "--config.log_every=10"]


def script(name, *args):
    return subprocess.run([sys.executable, os.path.join(EXPERIMENTS, name), *args], capture_output=True, text=True,
                          timeout=900)


def test_a_voc_folder_trains_from_the_command_line_with_its_own_classes(trained_on_voc_folder):
    workdir, out = trained_on_voc_folder
    names = sorted(shapes.CLASS_NAMES)
    assert "5 classes; skipped: nothing" in out
    assert checkpoint.load_metadata(workdir / "params")["class_names"] == names  # the XML names, sorted
    assert (workdir / "detections.png").exists()


def test_evaluate_py_equals_voc_eval_of_detect_images_json(trained_on_voc_folder, voc_folder, tmp_path):
    workdir, _ = trained_on_voc_folder
    out = script("evaluate.py", f"--checkpoint={workdir / 'params'}", "--dataset=vocdir", f"--data_dir={voc_folder}",
                 f"--out_dir={tmp_path / 'eval'}", "--batch_size=8")
    assert out.returncode == 0, out.stderr[-3000:]
    names = sorted(shapes.CLASS_NAMES)
    assert all(f"| {name} |" in out.stdout for name in names)  # the table uses the stored class names
    reported = json.loads((tmp_path / "eval" / "metrics.json").read_text())["voc07_mAP"]

    # The same test images through detect_images.py, scored independently from its detections.json.
    stems = (voc_folder / "ImageSets" / "Main" / "test.txt").read_text().split()
    paths = [str(voc_folder / "JPEGImages" / f"{stem}.jpg") for stem in stems]
    out = script("detect_images.py", f"--checkpoint={workdir / 'params'}", f"--out_dir={tmp_path / 'det'}",
                 "--min_score=0.01", *paths)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "det" / "detections.json").read_text())
    assert {r["category_name"] for r in results} <= set(names)
    detections, truths = [], []
    for image_id, stem in enumerate(stems):
        mine = [r for r in results if r["image_id"] == image_id]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in mine)]
        detections.append(ImageDetections(image_id, boxes, [r["score"] for r in mine],
                                          [r["category_id"] for r in mine]))
        root = ElementTree.parse(voc_folder / "Annotations" / f"{stem}.xml").getroot()
        objects = root.findall("object")
        truths.append(ImageGroundTruth(
            image_id, [[float(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")] for o in objects],
            [names.index(o.findtext("name")) + 1 for o in objects], [o.findtext("difficult") == "1" for o in objects]))
    independent = np.mean([voc_eval_restated(detections, truths, label, True) for label in range(1, 6)])
    print(f"VOC07 mAP: evaluate.py {reported:.4f}, voc_eval of detections.json {independent:.4f}")
    assert abs(independent - reported) <= 0.01, (independent, reported)


def test_a_coco_json_trains_evaluates_and_reports_the_source_ids(tmp_path):
    root = tmp_path / "coco"
    summary = shapes.write_coco_json(root, 32, seed=4)
    train_json, eval_json = (root / "annotations" / f"instances_{s}.json" for s in ("train2017", "val2017"))
    workdir = tmp_path / "run"
    out = script("train.py", f"--config={RECIPE}", "--config.dataset=cocojson",
                 f"--config.train_annotations={train_json}", f"--config.train_images={root / 'train2017'}",
                 f"--config.eval_annotations={eval_json}", f"--config.eval_images={root / 'val2017'}",
                 f"--workdir={workdir}", *SHORT, "--config.eval_every=0")  # evaluate.py scores it below
    assert out.returncode == 0, out.stderr[-3000:]
    metadata = checkpoint.load_metadata(workdir / "params")
    assert metadata["category_ids"] == sorted(summary["category_ids"].values())  # the source's own ids, by id
    out = script("evaluate.py", f"--checkpoint={workdir / 'params'}", "--dataset=cocojson",
                 f"--annotations={eval_json}", f"--images={root / 'val2017'}", f"--out_dir={tmp_path / 'eval'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "COCO-style: AP" in out.stdout
    image = next((root / "val2017").glob("*.jpg"))
    out = script("detect_images.py", f"--checkpoint={workdir / 'params'}", f"--out_dir={tmp_path / 'det'}",
                 "--min_score=0.01", str(image))
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "det" / "detections.json").read_text())
    assert results and {r["category_id"] for r in results} <= set(summary["category_ids"].values())


# ----------------------------------------------------------------------------- faults
def test_faults_are_skipped_counted_and_reported_at_the_start(tmp_path):
    root = tmp_path / "voc"
    shapes.write_voc_folder(root, 20, seed=5, test_fraction=0.25)
    trainval = (root / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    (root / "JPEGImages" / f"{trainval[0]}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not an image")  # unreadable
    data = (root / "JPEGImages" / f"{trainval[1]}.jpg").read_bytes()
    (root / "JPEGImages" / f"{trainval[1]}.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (root / "Annotations" / f"{trainval[2]}.xml").write_text("<annotation><object>")  # malformed
    xml = (root / "Annotations" / f"{trainval[3]}.xml").read_text()
    xml = xml.replace("<xmin>", "<xmin>9999", 1)  # a box outside its image
    (root / "Annotations" / f"{trainval[3]}.xml").write_text(xml)
    names, indexes, stats, _ = vocdir.open_voc_folder(str(root), class_names=("circle", "square", "star"))
    assert names == ("circle", "square", "star")
    assert stats["unreadable_images"] == 2 and stats["malformed_annotations"] == 1 and stats["bad_boxes"] >= 1
    assert stats["other_classes"] > 0  # triangles and hexagons: not among the given classes
    workdir = tmp_path / "run"
    out = script("train.py", f"--config={RECIPE}", "--config.dataset=vocdir", f"--config.data_dir={root}",
                 "--config.class_names=circle,square,star", f"--workdir={workdir}", *SHORT[:2],
                 "--config.num_steps=2", "--config.eval_every=0")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipped: 2 unreadable images, 1 malformed annotation" in out.stdout
    assert checkpoint.load_metadata(workdir / "params")["class_names"] == ["circle", "square", "star"]


def test_missing_or_empty_data_fails_at_once_naming_the_path(tmp_path):
    def train(*args, exit_code=1):
        out = script("train.py", f"--config={RECIPE}", f"--workdir={tmp_path / 'w'}", *args)
        assert out.returncode == exit_code and "Traceback" not in out.stderr, out.stderr[-3000:]
        return out.stderr

    assert f"VOC folder (--config.data_dir) not found: {tmp_path / 'nowhere'}" in train(
        "--config.dataset=vocdir", f"--config.data_dir={tmp_path / 'nowhere'}")
    root = tmp_path / "voc"
    shapes.write_voc_folder(root, 8, seed=6, test_fraction=0.25)
    (root / "ImageSets" / "Main" / "test.txt").write_text("")
    assert "the evaluation split of" in train("--config.dataset=vocdir", f"--config.data_dir={root}")
    (root / "ImageSets" / "Main" / "test.txt").write_text("shape_000001\n")
    assert "has no objects of the classes ['nothing']" in train(
        "--config.dataset=vocdir", f"--config.data_dir={root}", "--config.class_names=nothing")
    assert "train_annotations=None: the cocojson data set needs it" in train("--config.dataset=cocojson",
                                                                              exit_code=2)  # a config problem


def test_a_folder_without_split_files_keeps_every_tenth_image_for_evaluation(tmp_path):
    root = tmp_path / "voc"
    shapes.write_voc_folder(root, 30, seed=7, split_files=False)
    splits, how = vocdir.voc_splits(str(root))
    assert len(splits["eval"]) == 3 and len(splits["train"]) == 27 and "every 10th" in how
    assert not {s for _, s in splits["eval"]} & {s for _, s in splits["train"]}


# ----------------------------------------------------------------------------- EXIF orientation
@pytest.mark.parametrize("orientation", range(1, 9))
def test_photos_are_turned_upright_as_exif_transpose_does(tmp_path, orientation):
    pixels = np.random.default_rng(orientation).integers(0, 255, (12, 20, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"  # lossless, so that pixels compare exactly
    exif = Image.Exif()
    exif[index.EXIF_ORIENTATION_TAG] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes())
    width, height, found = index.image_header(str(path))
    assert (width, height, found) == (20, 12, orientation)
    with Image.open(path) as image:
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    decoded = tf.io.decode_image(tf.io.read_file(str(path)), channels=3)
    np.testing.assert_array_equal(canonical.orient(decoded, orientation).numpy(), expected)


def test_boxes_drawn_on_the_stored_pixels_are_not_turned(tmp_path):
    assert index.orientation_to_apply(20, 12, 6, (20, 12)) == 1  # annotated at the stored size
    assert index.orientation_to_apply(20, 12, 6, (12, 20)) == 6  # annotated upright
    assert index.orientation_to_apply(20, 12, 6, None) == 6
    assert index.orientation_to_apply(20, 12, 3, (20, 12)) == 3  # no side swap: cannot tell, upright wins


def test_data_set_names_cover_tfds_and_disk():
    assert {"voc", "coco", "shapes", "shapes_tiny", "vocdir", "cocojson"} <= set(sources.names())
