"""Input pipelines: TFDS VOC/COCO under mock data, batching, reproducibility, local readers."""

import json
import logging

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from ssd_jax.classes import VOC_CLASS_NAMES
from ssd_jax.data import canonical, cocojson, pipeline, sources, tfds_sources, vocdir

SIZE = 64


def check_train_batch(batch, batch_size, max_boxes, num_classes):
    assert batch["image"].shape == (batch_size, SIZE, SIZE, 3) and batch["image"].dtype == np.uint8
    assert batch["boxes"].shape == (batch_size, max_boxes, 4) and batch["boxes"].dtype == np.float32
    assert batch["labels"].dtype == np.int32 and batch["mask"].dtype == bool
    np.testing.assert_array_equal(batch["mask"], batch["labels"] > 0)
    real = batch["boxes"][batch["mask"]]
    assert np.all((real >= 0) & (real <= 1)) and np.all(real[:, 2:] > real[:, :2])
    assert np.all(batch["boxes"][~batch["mask"]] == 0)
    assert np.all(batch["labels"] < num_classes)


@pytest.mark.parametrize("dataset, num_classes", [("voc", 21), ("coco", 81)])
def test_tfds_training_and_eval_batches_under_mock_data(dataset, num_classes):
    with tfds.testing.mock_data(num_examples=6):
        source = tfds_sources.tfds_source(dataset, "train")
        batches = pipeline.as_numpy(pipeline.train_dataset(source, batch_size=4, image_size=SIZE, max_boxes=10))
        # 6 examples, but the stream goes on: no "stops after one epoch".
        for _ in range(4):
            check_train_batch(next(batches), 4, 10, num_classes)
        eval_batches = list(pipeline.as_numpy(pipeline.eval_dataset(
            tfds_sources.tfds_source(dataset, "eval"), batch_size=4, image_size=SIZE)))
    assert [len(b["image"]) for b in eval_batches] == [4, 2]  # one pass; the last batch is short
    for batch in eval_batches:
        assert batch["image"].shape[1:] == (SIZE, SIZE, 3)
        assert batch["difficult"].shape == batch["labels"].shape
        assert batch["original_size"].dtype == np.int32 and np.all(batch["original_size"] > 0)
        assert batch["image_id"].dtype == np.int64
    ids = np.concatenate([b["image_id"] for b in eval_batches])
    assert len(set(ids.tolist())) == len(ids)


def synthetic_source(count=10, seed=0, max_objects=5):
    """Canonical examples in memory; some images have no boxes at all."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(count):
        n = int(rng.integers(0, max_objects + 1)) if i % 4 else 0
        lo = rng.uniform(0, 0.7, (n, 2))
        hi = np.minimum(lo + rng.uniform(0.05, 0.3, (n, 2)), 1)
        examples.append({"image": rng.integers(0, 255, (int(rng.integers(40, 90)), 70, 3), dtype=np.uint8),
                         "boxes": np.concatenate([lo, hi], 1).astype(np.float32),
                         "labels": rng.integers(1, 5, n).astype(np.int32),
                         "difficult": np.zeros(n, bool), "image_id": np.int64(i)})
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=canonical.CANONICAL_SIGNATURE)


def take(ds, n):
    iterator = pipeline.as_numpy(ds)
    return [next(iterator) for _ in range(n)]


def test_same_seed_same_batches_and_resume_continues_the_stream():
    def stream(seed, start_index=0):
        return pipeline.train_dataset(synthetic_source(), batch_size=3, image_size=SIZE, max_boxes=6, seed=seed,
                                      shuffle_buffer=16, start_index=start_index)

    first, again, other = take(stream(1), 5), take(stream(1), 5), take(stream(2), 5)
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(first[0]["image"], other[0]["image"])
    # Skipping 2 batches' worth of examples resumes exactly where an uninterrupted run is.
    resumed = take(stream(1, start_index=2 * 3), 3)
    for a, b in zip(first[2:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # Images without boxes pass through as all-padding rows.
    assert any(not row.any() for batch in first for row in batch["mask"])


def test_too_many_boxes_keeps_the_largest_and_warns(caplog):
    boxes = np.array([[0, 0, 0.1, 0.1], [0, 0, 0.9, 0.9], [0.2, 0.2, 0.3, 0.35], [0.5, 0.5, 0.9, 0.6]], np.float32)
    example = {"boxes": tf.constant(boxes), "labels": tf.constant([1, 2, 3, 4])}
    out = pipeline.pad_objects(example, max_boxes=2)
    np.testing.assert_array_equal(out["labels"].numpy(), [2, 4])  # the two largest, in their order
    assert int(out["num_dropped"]) == 2
    padded = pipeline.pad_objects(example, max_boxes=6)
    np.testing.assert_array_equal(padded["mask"].numpy(), [1, 1, 1, 1, 0, 0])
    with caplog.at_level(logging.WARNING):
        take(pipeline.train_dataset(synthetic_source(max_objects=5), batch_size=4, image_size=SIZE, max_boxes=1), 3)
    assert "max_boxes too small" in caplog.text


def test_unprepared_or_unknown_dataset_errors(tmp_path):
    with pytest.raises(sources.DatasetNotPreparedError, match="tfds build voc/2007"):
        tfds_sources.tfds_source("voc", "train", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        tfds_sources.tfds_source("imagenet", "train")


# ----------------------------------------------------------------------------- local readers
def write_jpeg(path, height=40, width=60, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


VOC_XML = """<annotation><size><width>60</width><height>40</height></size>{objects}</annotation>"""
VOC_OBJECT = ("<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
              "<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")


def make_vocdevkit(root):
    base = root / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    objects = {
        "000001": [("dog", 0, 11, 6, 30, 20), ("person", 1, 1, 1, 60, 40)],
        "000002": [],
        "000003": [("cat", 0, 5, 5, 10, 10)],  # its image is corrupt
        "000004": None,  # malformed XML
        "000005": [("unicorn", 0, 5, 5, 10, 10)],  # not one of the given classes
        "000006": [("dog", 0, 5, 5, 20, 20), ("cat", 0, 30, 30, 20, 20)],  # the test split; one inverted box
    }
    for i, (name, objs) in enumerate(objects.items()):
        if name == "000003":
            (base / "JPEGImages" / f"{name}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        else:
            write_jpeg(base / "JPEGImages" / f"{name}.jpg", seed=i)
        xml = "<annotation><object>" if objs is None else VOC_XML.format(objects="".join(
            VOC_OBJECT.format(name=n, difficult=d, x0=x0, y0=y0, x1=x1, y1=y1) for n, d, x0, y0, x1, y1 in objs))
        (base / "Annotations" / f"{name}.xml").write_text(xml)
    (base / "ImageSets/Main/trainval.txt").write_text("\n".join(list(objects)[:5]) + "\n")
    (base / "ImageSets/Main/test.txt").write_text("000006\n")


def test_vocdevkit_reader(tmp_path):
    make_vocdevkit(tmp_path)
    names, indexes, stats, how = vocdir.open_voc_folder(str(tmp_path), class_names=VOC_CLASS_NAMES)
    assert names == VOC_CLASS_NAMES and "VOC2007 trainval" in how
    examples = list(indexes["train"].dataset().as_numpy_iterator())
    assert [int(e["image_id"]) for e in examples] == [1, 2, 5]
    first = examples[0]
    assert first["image"].shape == (40, 60, 3)
    # VOC's corners as the XML gives them (as TFDS keeps them), normalised.
    np.testing.assert_allclose(first["boxes"], [[11 / 60, 6 / 40, 30 / 60, 20 / 40], [1 / 60, 1 / 40, 1, 1]],
                               atol=1e-6)
    np.testing.assert_array_equal(first["labels"], [12, 15])  # dog, person -> ids 12, 15
    np.testing.assert_array_equal(first["difficult"], [False, True])
    assert examples[1]["boxes"].shape == (0, 4)
    assert stats == {"unreadable_images": 1, "malformed_annotations": 1, "other_classes": 1, "bad_boxes": 1}
    assert stats.summary() == ("skipped: 1 unreadable image, 1 malformed annotation, 1 bad box, "
                               "1 object of another class")
    # The same examples feed the training pipeline, read from the files as it streams.
    source = indexes["train"].dataset(decode=False)
    check_train_batch(take(pipeline.train_dataset(source, batch_size=2, image_size=SIZE, max_boxes=4), 1)[0],
                      2, 4, 21)


def test_missing_folders_and_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="VOC folder .* not found"):
        vocdir.open_voc_folder(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="VOC Annotations folder"):
        vocdir.open_voc_folder(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="COCO annotation file of the train split not found"):
        cocojson.open_coco_json({"train": str(tmp_path / "instances.json")}, {"train": str(tmp_path)})


def test_coco_json_reader(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write_jpeg(images / "a.jpg", 40, 60, seed=1)
    write_jpeg(images / "b.jpg", 30, 30, seed=2)
    (images / "c.jpg").write_bytes(b"garbage")
    annotations = {
        "images": [{"id": 10, "file_name": "a.jpg", "height": 40, "width": 60},
                   {"id": 11, "file_name": "b.jpg", "height": 30, "width": 30},
                   {"id": 12, "file_name": "c.jpg", "height": 30, "width": 30},
                   {"id": 13, "file_name": "missing.jpg", "height": 30, "width": 30}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 18, "bbox": [6, 4, 30, 20], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 1, "bbox": [0, 0, 60, 40], "iscrowd": 1},
            {"id": 3, "image_id": 10, "category_id": 1, "bbox": [5, 5, -3, 4]},  # negative width
            {"id": 4, "image_id": 11, "category_id": 99, "bbox": [1, 1, 2, 2]},  # unknown category
            {"id": 5, "image_id": 11, "category_id": 1},  # no bbox
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(annotations))
    names, category_ids, indexes, stats = cocojson.open_coco_json({"eval": str(path)}, {"eval": str(images)})
    assert names == ("person", "dog") and category_ids == (1, 18)
    examples = list(indexes["eval"].dataset().as_numpy_iterator())
    assert [int(e["image_id"]) for e in examples] == [10, 11]
    np.testing.assert_allclose(examples[0]["boxes"], [[0.1, 0.1, 0.6, 0.6], [0, 0, 1, 1]], atol=1e-6)
    np.testing.assert_array_equal(examples[0]["labels"], [2, 1])  # dog (id 18) -> 2, person -> 1
    np.testing.assert_array_equal(examples[0]["difficult"], [False, True])  # crowd
    # The unknown category is a fault of the file (no class_names left it out): counted as such.
    assert stats == {"malformed_annotations": 1, "unknown_categories": 1, "unreadable_images": 2, "bad_boxes": 1}


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    """The built-in data set's tiny config, prepared for real (TFDS records on disk)."""
    return str(tmp_path_factory.mktemp("tfds"))


def test_shapes_through_the_pipeline_and_multi_host_shards(shapes_dir):
    source = tfds_sources.tfds_source("shapes_tiny", "train", data_dir=shapes_dir)  # prepares on first use
    check_train_batch(take(pipeline.train_dataset(source, batch_size=4, image_size=SIZE, max_boxes=8), 1)[0],
                      4, 8, 6)
    everything = [int(ex["image_id"]) for ex in source.as_numpy_iterator()]
    parts = [[int(ex["image_id"]) for ex in tfds_sources.tfds_source(
        "shapes_tiny", "train", data_dir=shapes_dir, process_index=i, process_count=2).as_numpy_iterator()]
        for i in range(2)]
    assert len(everything) == 16 and len(parts[0]) == len(parts[1]) == 8
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == sorted(everything)


def test_encoded_source_gives_the_same_batches(shapes_dir):
    def batches(decode):
        source = tfds_sources.tfds_source("shapes_tiny", "train", data_dir=shapes_dir, decode=decode)
        return take(pipeline.train_dataset(source, batch_size=4, image_size=SIZE, max_boxes=8, seed=3,
                                           start_index=5), 2)

    for decoded, encoded in zip(batches(True), batches(False)):
        for key in decoded:
            np.testing.assert_array_equal(decoded[key], encoded[key])
