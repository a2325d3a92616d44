"""What a new user hit: commands that write a named output never destroy files ssd_jax did not
write; faults in their data are counted under their own names; the detection command takes
folders, patterns, NMS options and Caffe models; a bad config field is listed, not a traceback."""

import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from caffe_files import random_ssd300_weights, ssd300_prototxt, write_caffemodel
from PIL import Image
from random_models import spread_params

import ssd_jax
from ssd_jax import checkpoint, configs, export, files
from ssd_jax.data import cocojson, shapes, vocdir

EXPERIMENTS = os.path.join(os.path.dirname(__file__), os.pardir, "experiments")
CONFIG = configs.ssd_tiny(num_classes=4)


def run(script, *args, timeout=600):
    return subprocess.run([sys.executable, os.path.join(EXPERIMENTS, script), *args], capture_output=True, text=True,
                          timeout=timeout)


def users_folder(path):
    """A folder of someone's own files -> {relative path: content}, to check that they survive."""
    contents = {"notes.txt": "my notes", "photos/cat.jpg": "not really a jpeg", "saved_model.pb": "mine too"}
    for name, text in contents.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return contents


def assert_intact(path, contents):
    for name, text in contents.items():
        assert (path / name).read_text() == text, name


@pytest.fixture(scope="module")
def params():
    return jax.tree.map(np.asarray, spread_params(CONFIG))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, params):
    return str(checkpoint.save_params(tmp_path_factory.mktemp("ckpt") / "params", params, CONFIG,
                                      metadata={"class_names": ["cat", "dog", "bird"]}))


# ----------------------------------------------------------------------------- exports
def test_an_export_never_replaces_a_folder_or_file_it_did_not_write(tmp_path, ckpt, params):
    folder = tmp_path / "mine"
    folder.mkdir()
    contents = users_folder(folder)
    for overwrite in ([], ["--overwrite"]):  # the command, with and without --overwrite
        out = run("export.py", f"--checkpoint={ckpt}", "--format=savedmodel", f"--out={folder}", *overwrite)
        assert out.returncode != 0 and "is not a savedmodel export written by ssd_jax" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
        assert_intact(folder, contents)
    plain = tmp_path / "model.tflite"
    plain.write_text("someone's file")
    for fmt in ("stablehlo", "tflite", "onnx"):
        for overwrite in (False, True):
            with pytest.raises(export.ExportError, match="not a .* export written by ssd_jax"):
                export.export(params, CONFIG, str(plain), format=fmt, overwrite=overwrite)
    assert plain.read_text() == "someone's file"
    # A file of the user's where the StableHLO metadata would go is just as safe.
    (tmp_path / "m.stablehlo.json").write_text("{}")
    with pytest.raises(export.ExportError, match="m.stablehlo.json already exists and is not the metadata"):
        export.export(params, CONFIG, str(tmp_path / "m.stablehlo"), format="stablehlo", overwrite=True)
    assert (tmp_path / "m.stablehlo.json").read_text() == "{}" and not (tmp_path / "m.stablehlo").exists()


def test_an_export_of_ours_is_replaced_only_with_overwrite(tmp_path, params):
    path = str(tmp_path / "model.stablehlo")
    export.export(params, CONFIG, path, format="stablehlo", class_names=["a", "b", "c"])
    with pytest.raises(export.ExportError, match="already holds a stablehlo export; pass --overwrite"):
        export.export(params, CONFIG, path, format="stablehlo")
    assert json.loads(open(f"{path}.json").read())["class_names"] == ["a", "b", "c"]
    export.export(params, CONFIG, path, format="stablehlo", class_names=["x", "y", "z"], overwrite=True)
    assert json.loads(open(f"{path}.json").read())["class_names"] == ["x", "y", "z"]
    with pytest.raises(export.ExportError, match="is not a tflite export"):  # another format's name is not ours
        export.export(params, CONFIG, path, format="tflite", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["model.stablehlo", "model.stablehlo.json"]  # no temporary file left


def test_replacing_a_directory_swaps_it_whole(tmp_path):
    old, new = tmp_path / "artifact", files.staging_directory(tmp_path / "artifact")
    old.mkdir()
    (old / "a").write_text("old")
    with open(os.path.join(new, "b"), "w") as f:
        f.write("new")
    files.replace(new, old)
    assert os.listdir(old) == ["b"] and sorted(os.listdir(tmp_path)) == ["artifact"]


# ----------------------------------------------------------------------------- checkpoints, data, pictures
def test_a_checkpoint_is_never_written_over_other_files(tmp_path, params):
    folder = tmp_path / "home"
    folder.mkdir()
    contents = users_folder(folder)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not an ssd_jax checkpoint"):
            checkpoint.save_params(folder, params, CONFIG, overwrite=overwrite)
    assert_intact(folder, contents)
    assert sorted(os.listdir(tmp_path)) == ["home"]
    # What else a checkpoint's folder holds (an evaluation's results) moves with it when it is replaced.
    ckpt = checkpoint.save_params(tmp_path / "ckpt", params, CONFIG)
    (tmp_path / "ckpt" / "eval").mkdir()
    (tmp_path / "ckpt" / "eval" / "metrics.json").write_text("{}")
    checkpoint.save_params(ckpt, params, CONFIG, overwrite=True)
    assert (tmp_path / "ckpt" / "eval" / "metrics.json").read_text() == "{}"


def test_a_workdir_given_for_its_params_is_named(tmp_path, ckpt):
    workdir = os.path.dirname(ckpt)
    out = run("detect.py", f"--checkpoint={workdir}", f"--out_dir={tmp_path / 'out'}", str(tmp_path / "x.png"))
    assert out.returncode != 0 and f"did you mean {ckpt}?" in out.stderr, out.stderr


def test_shapes_writer_never_replaces_a_users_voc_folders(tmp_path):
    root = tmp_path / "my_voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "000001.xml").write_text("<annotation/>")
    out = run("make_shapes_data.py", "--format=voc", f"--out={root}", "--count=2", "--overwrite", timeout=300)
    assert out.returncode != 0 and "never replaced" in out.stderr and "Annotations" in out.stderr
    assert (root / "Annotations" / "000001.xml").read_text() == "<annotation/>"
    shapes.write_voc_folder(tmp_path / "ours", 2)
    shapes.write_voc_folder(tmp_path / "ours", 3, overwrite=True)  # its own folders: replaced
    assert len(os.listdir(tmp_path / "ours" / "Annotations")) == 3


def test_pictures_and_results_are_replaced_only_if_ours(tmp_path, ckpt):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.jpg"):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)).save(images / name)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "b.png").write_bytes((images / "a.png").read_bytes())  # the user's own picture, same name
    for overwrite in ([], ["--overwrite"]):
        out = run("detect.py", f"--checkpoint={ckpt}", f"--out_dir={out_dir}", str(images), *overwrite)
        assert out.returncode != 0 and "b.png already exists and is not" in out.stderr, out.stderr
    assert (out_dir / "b.png").read_bytes() == (images / "a.png").read_bytes()
    (out_dir / "b.png").unlink()
    out = run("detect.py", f"--checkpoint={ckpt}", f"--out_dir={out_dir}", str(images))
    assert out.returncode == 0, out.stderr
    out = run("detect.py", f"--checkpoint={ckpt}", f"--out_dir={out_dir}", str(images))  # a second run
    assert out.returncode != 0 and "pass --overwrite" in out.stderr
    out = run("detect.py", f"--checkpoint={ckpt}", f"--out_dir={out_dir}", str(images), "--overwrite")
    assert out.returncode == 0, out.stderr
    # Pictures written next to their inputs would overwrite them: refused whatever the flags.
    out = run("detect.py", f"--checkpoint={ckpt}", f"--out_dir={images}", str(images / "a.png"), "--overwrite")
    assert out.returncode != 0 and "is one of the input images" in out.stderr


# ----------------------------------------------------------------------------- the detection command
def test_detect_takes_folders_patterns_and_the_nms_options(tmp_path, ckpt, params):
    images = tmp_path / "images"
    (images / "more").mkdir(parents=True)
    pixels = {}
    for k, name in enumerate(("z.png", "a.jpg", "more/c.png", "notes.txt")):
        if name.endswith("txt"):
            (images / name).write_text("not an image")
            continue
        pixels[name] = np.random.default_rng(k).integers(0, 255, (60 + 10 * k, 80, 3), np.uint8)
        Image.fromarray(pixels[name]).save(images / name, quality=100)
    out = run("detect.py", f"--checkpoint={ckpt}", f"--out_dir={tmp_path / 'out'}", "--min_score=0.01",
              "--iou_threshold=0.3", "--max_detections=7", str(images), str(images / "more" / "*.png"),
              str(images / "nothing*.png"))
    assert out.returncode == 0, out.stderr
    assert "no file matches this pattern" in out.stderr
    results = json.loads((tmp_path / "out" / "detections.json").read_text())
    order = [r["file_name"] for r in results]
    assert sorted(set(order)) == ["a.jpg", "c.png", "z.png"]  # the folder by name, then the pattern's match
    assert [r["image_id"] for r in results if r["file_name"] == "a.jpg"][0] == 0
    for name in ("a.jpg", "z.png"):
        from ssd_jax.image_io import read_image

        image = read_image(images / name)
        expected = ssd_jax.detect(params, [image], config=CONFIG, iou_threshold=0.3, max_detections=7)
        mine = [r for r in results if r["file_name"] == name]
        assert len(mine) == int(np.sum(np.asarray(expected.scores[0]) >= 0.01)) <= 7


@pytest.mark.slow
def test_detect_runs_a_caffe_model(tmp_path):
    prototxt, convs = ssd300_prototxt(num_classes=3, width=8)
    (tmp_path / "deploy.prototxt").write_text(prototxt)
    write_caffemodel(tmp_path / "model.caffemodel", random_ssd300_weights(convs, seed=1))
    image = np.random.default_rng(2).integers(0, 255, (120, 160, 3), np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    out = run("detect.py", f"--weights={tmp_path / 'model.caffemodel'}", "--format=caffe",
              f"--prototxt={tmp_path / 'deploy.prototxt'}", "--class_names=cat,dog", "--min_score=0.02",
              f"--out_dir={tmp_path / 'out'}", str(tmp_path / "photo.png"))
    assert out.returncode == 0, out.stderr
    params, config = ssd_jax.weights.from_caffe(tmp_path / "deploy.prototxt", tmp_path / "model.caffemodel")
    expected = ssd_jax.detect(params, image[None], config=config)
    results = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert len(results) == int(np.sum(np.asarray(expected.scores[0]) >= 0.02)) > 0
    assert {r["category_name"] for r in results} <= {"cat", "dog"}
    out = run("detect.py", f"--weights={tmp_path / 'model.caffemodel'}", "--format=caffe",
              f"--out_dir={tmp_path / 'out2'}", str(tmp_path / "photo.png"))
    assert out.returncode != 0 and "--prototxt" in out.stderr


# ----------------------------------------------------------------------------- the training command
def test_an_unknown_config_field_is_listed_with_the_others(tmp_path):
    out = run("train.py", "--dataset=shapes_tiny", f"--workdir={tmp_path / 'w'}", "--config.foo=1",
              "--config.batch_sise=4", "--config.num_steps=0")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert "batch_sise: not a training config field; did you mean batch_size?" in out.stderr
    assert "foo: not a training config field" in out.stderr and "num_steps=0: must be" in out.stderr
    out = run("train.py", "--dataset=shapes_tiny", f"--workdir={tmp_path / 'w'}", "--config.foo.bar=1")
    assert out.returncode == 2 and "foo: not a training config field" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------- faults in the user's data
def test_coco_json_faults_are_each_counted_under_their_own_name(tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(images / "a.jpg")
    annotations = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 60, "height": 40}, {"file_name": "b.jpg"}],
        "categories": [{"id": 5, "name": "cat"}, {"id": 6, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 1, 10, 10]},
            {"id": 2, "image_id": 99, "category_id": 5, "bbox": [1, 1, 10, 10]},  # no such image
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [1, 1, 10, 10]},  # no such category
            {"id": 4, "image_id": 1, "category_id": 6, "bbox": [1, 1, 10, 10]},  # left out by class_names below
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(annotations))
    with caplog.at_level(logging.WARNING):
        names, _, indexes, stats = cocojson.open_coco_json({"eval": str(path)}, {"eval": str(images)})
    assert names == ("cat", "dog") and len(indexes["eval"]) == 1 and indexes["eval"].num_objects == 2
    assert stats == {"malformed_image_entries": 1, "orphan_annotations": 1, "unknown_categories": 1}
    assert stats.summary() == ("skipped: 1 malformed image entry, 1 annotation of no listed image, "
                               "1 annotation of an unknown category")
    warnings = "\n".join(record.getMessage() for record in caplog.records)
    for entry in ("images[1]", "annotation 2: its image_id 99", "annotation 3: category_id 7"):
        assert f"{path}" in warnings and entry in warnings, entry
    _, _, _, stats = cocojson.open_coco_json({"eval": str(path)}, {"eval": str(images)}, class_names=("cat",))
    assert stats["other_classes"] == 1 and stats["unknown_categories"] == 1  # only now "another class"


def test_one_malformed_voc_object_leaves_out_that_object_only(tmp_path, caplog):
    root = tmp_path / "voc"
    shapes.write_voc_folder(root, 8, seed=1, test_fraction=0.25)
    stem = (root / "ImageSets" / "Main" / "trainval.txt").read_text().split()[0]
    xml_path = root / "Annotations" / f"{stem}.xml"
    xml = xml_path.read_text()
    count = xml.count("<object>")
    xml = xml.replace("<object>", "<object><name>lost</name></object><object>", 1)  # an object without bndbox
    xml_path.write_text(xml)
    with caplog.at_level(logging.WARNING):
        _, indexes, stats, _ = vocdir.open_voc_folder(str(root))
    index = indexes["train"]
    position = [os.path.basename(p) for p in index.paths].index(f"{stem}.jpg")  # the image is kept ...
    assert len(index.labels[position]) == count  # ... with all its good objects
    assert stats["malformed_objects"] == 1 and "malformed_annotations" not in stats
    messages = [record.getMessage() for record in caplog.records if "lost" in record.getMessage()]
    assert len(messages) == 1 and messages[0].count(str(xml_path)) == 1 and "no bndbox" in messages[0]
