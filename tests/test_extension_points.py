"""The two extension points, proven from outside the library: a base network and a data source
defined in this file alone, registered through the public API, and used by the generic code
(init, detect, training, checkpoints, export, evaluation) without any change to it."""

import dataclasses
import functools
import io
import json
import subprocess
import sys
import textwrap
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import ssd_jax
from ssd_jax import checkpoint, configs, export, state_dicts, train, weights
from ssd_jax.configs import ExtraLayer, SSDConfig
from ssd_jax.data import sources
from ssd_jax.data.canonical import IndexedSplit
from ssd_jax.evaluation import datasets as evaluation
from ssd_jax.models import base_networks
from ssd_jax.models.layers import conv_act


# ----------------------------------------------------------------------------- a base network of our own
@dataclasses.dataclass(frozen=True)
class ToySettings:
    kind: ClassVar[str] = "toy_net"
    width: int = 8


class ToyNet(nn.Module):
    """Three stride-2 convolutions; the last two are the sources (S/4 and S/8)."""

    width: int = 8
    batch_norm: bool = False
    dtype: Any = jnp.float32
    gradients: str = "xla"

    @nn.compact
    def __call__(self, x, train: bool = False):
        layer = functools.partial(conv_act, dtype=self.dtype, norm=self.batch_norm, train=train,
                                  gradients=self.gradients, stride=2, padding=1)
        x = layer(x, self.width, 3, name="stem")
        a = layer(x, 2 * self.width, 3, name="block1")
        return [a, layer(a, 4 * self.width, 3, name="block2")]


def toy_imagenet(state_dict) -> dict:
    """'Their' weights: PyTorch-style keys stem.weight / stem.bias, ... -> the backbone subtree."""
    return state_dicts.import_backbone(state_dict, {name: name for name in ("stem", "block1", "block2")})


def half(size: int) -> int:
    return (size - 1) // 2 + 1  # a 3x3 convolution at stride 2, padding 1


def toy_ssd(num_classes: int = 4) -> SSDConfig:
    return SSDConfig(name="toy_ssd", num_classes=num_classes, image_size=64, feature_map_sizes=(16, 8, 4),
                     steps=(4, 8, 16), min_sizes=(10.0, 25.0, 40.0), max_sizes=(25.0, 40.0, 60.0),
                     aspect_ratios=((2.0,),) * 3, backbone=ToySettings(), extras=(ExtraLayer(16, 32),))


@pytest.fixture
def toy_network():
    """The toy network and its preset registered for the test, then forgotten (other tests in this
    process see the registries as they were)."""
    base_networks.register(base_networks.BaseNetwork(
        settings=ToySettings, build=lambda settings, **options: ToyNet(settings.width, **options),
        source_sizes=lambda settings, size: [half(half(size)), half(half(half(size)))],
        imagenet_import=toy_imagenet, block_prefixes=lambda settings, blocks: ("stem", "block1")[:blocks],
        max_frozen_blocks=2))
    configs.register_preset("toy_ssd", toy_ssd)
    yield
    configs.PRESETS.pop("toy_ssd")
    base_networks.unregister("toy_net")


def test_a_base_network_defined_here_runs_trains_saves_and_exports(tmp_path, toy_network):
    config = configs.get("toy_ssd", num_classes=4)
    assert config.base_network.kind == "toy_net" and config.num_priors == (16 * 16 + 8 * 8 + 4 * 4) * 4
    params = ssd_jax.init(jax.random.key(0), config)
    images = np.random.default_rng(0).integers(0, 256, (2, 90, 70, 3), np.uint8)
    detections = ssd_jax.detect(params, images, config=config)
    assert detections.boxes.shape == (2, 200, 4) and int(np.sum(detections.num_detections)) > 0

    # Its ImageNet weights, merged into fresh parameters; its first block frozen while training.
    their = {f"{name}.{part}": np.asarray(value).transpose(3, 2, 0, 1) if part == "weight" else np.asarray(value)
             for name in ("stem", "block1", "block2")
             for part, value in (("weight", params["backbone"][name]["kernel"] * 0.5),
                                 ("bias", params["backbone"][name]["bias"]))}
    fresh = params
    params = weights.merge_backbone(params, config.base_network.imagenet_import(their))
    np.testing.assert_allclose(params["backbone"]["block2"]["kernel"], fresh["backbone"]["block2"]["kernel"] * 0.5,
                               rtol=1e-6)
    recipe = train.default_config()
    recipe.update(model="toy_ssd", optimizer="adam", learning_rate=1e-2, warmup_steps=0, frozen_blocks=1,
                  init_backbone="imported")
    assert train.frozen_blocks(recipe) == 1 and train.frozen_prefixes(config, 1) == ("stem",)
    optimizer = train.make_optimizer(recipe)
    mesh = train.data_mesh(jax.devices()[:1])
    step = train.jit_train_step(config, optimizer, train.learning_rate_schedule(recipe), mesh,
                                frozen=train.frozen_prefixes(config, 1))
    state = train.replicate(train.create_train_state(params, optimizer), mesh)
    boxes = np.tile(np.asarray([[[0.2, 0.2, 0.6, 0.7], [0.0, 0.0, 0.0, 0.0]]], np.float32), (2, 1, 1))
    batch = {"image": images[:, :64, :64], "boxes": boxes, "labels": np.tile([[1, 0]], (2, 1)).astype(np.int32),
             "mask": np.tile([[True, False]], (2, 1))}
    losses = []
    for _ in range(3):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    np.testing.assert_array_equal(state.params["backbone"]["stem"]["kernel"], params["backbone"]["stem"]["kernel"])
    assert not np.array_equal(state.params["backbone"]["block1"]["kernel"], params["backbone"]["block1"]["kernel"])

    # Saved and loaded by name (config.json names its kind), then exported and run without ssd_jax.
    trained = jax.tree.map(np.asarray, train.inference_params(state))
    ckpt = checkpoint.save_params(tmp_path / "ckpt", trained, config, metadata={"class_names": ["a", "b", "c"]})
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["config"]["backbone"] == {
        "kind": "toy_net", "width": 8}
    loaded, loaded_config = checkpoint.load_params(ckpt)
    assert loaded_config == config
    path = export.export(loaded, loaded_config, str(tmp_path / "toy.stablehlo"), format="stablehlo")
    program = textwrap.dedent("""
        import sys
        sys.modules['ssd_jax'] = None
        import numpy as np, jax
        exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
        np.save(sys.argv[3], np.asarray(exported.call(np.load(sys.argv[2]))["scores"]))
    """)
    np.save(tmp_path / "in.npy", images)
    out = subprocess.run([sys.executable, "-c", program, path, str(tmp_path / "in.npy"), str(tmp_path / "out.npy")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    expected = ssd_jax.detect(trained, images, config=config)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected.scores, atol=1e-5)


def test_a_base_network_that_is_not_registered_is_named(toy_network):
    @dataclasses.dataclass(frozen=True)
    class Unknown:
        kind: ClassVar[str] = "unknown_net"

    with pytest.raises(ValueError, match="backbone: .*not the settings of a registered base network"):
        dataclasses.replace(toy_ssd(), backbone=Unknown())
    with pytest.raises(ValueError, match="unknown base network 'unknown_net'"):
        configs.from_dict({**configs.to_dict(toy_ssd()), "backbone": {"kind": "unknown_net"}})


# ----------------------------------------------------------------------------- a data source of our own
def square_images(count: int, seed: int) -> list[tuple[bytes, list[float]]]:
    """PNG images of one bright square on a dark background -> (encoded image, normalised box)."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(count):
        size = int(rng.integers(60, 90))
        image = np.full((size, size, 3), 30, np.uint8)
        side = int(rng.integers(size // 3, size // 2))
        x, y = (int(v) for v in rng.integers(0, size - side, 2))
        image[y:y + side, x:x + side] = 220
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        examples.append((buffer.getvalue(), [x / size, y / size, (x + side) / size, (y + side) / size]))
    return examples


def squares_split(count: int, seed: int) -> IndexedSplit:
    examples = square_images(count, seed)
    encoded = tf.constant([data for data, _ in examples])
    boxes = tf.constant([[box] for _, box in examples], tf.float32)

    def read(index):
        return {"image": encoded[index], "boxes": boxes[index], "labels": tf.constant([1], tf.int32),
                "difficult": tf.constant([False]), "image_id": tf.cast(index, tf.int64)}

    return IndexedSplit(size=count, read=read)


def open_squares(*, square_count=24, class_names=()):
    del class_names  # one class, its own
    return sources.indexed_source("squares", ("square",), {"train": squares_split(square_count, 0),
                                                           "eval": squares_split(8, 1)},
                                  where=f"{square_count} generated squares")


@pytest.fixture
def squares():
    sources.register(sources.DataSource(
        name="squares", open=open_squares, description="bright squares, made in the test",
        fields={"square_count": sources.Field(default=24, help="images of the training split")},
        check=lambda values: [] if values.get("square_count", 24) >= 4 else [
            f"square_count={values['square_count']}: must be at least 4"]))
    yield
    sources.unregister("squares")


def test_a_data_source_defined_here_trains_and_evaluates(tmp_path, squares):
    config = train.default_config()
    assert config.square_count == 24 and "squares" in sources.names()  # its field and its name, from the registry
    config.update(model="ssd_tiny", dataset="squares", batch_size=4, num_steps=6, checkpoint_every=6, eval_every=6,
                  eval_batch_size=4, max_boxes=4, optimizer="adam", learning_rate=1e-3, warmup_steps=0,
                  zoom_out_probability=0.0, crop_probability=0.0, photometric=False, log_every=2)
    config.square_count = 2
    with pytest.raises(train.ConfigError, match="square_count=2: must be at least 4"):
        train.validate_config(config)
    config.square_count = 12
    last = train.train_and_evaluate(config, str(tmp_path / "run"), progress=False)
    assert np.isfinite(last["loss"]) and 0 <= last["voc07_mAP"] <= 1
    params, model_config = checkpoint.load_params(tmp_path / "run" / "params")
    assert checkpoint.load_metadata(tmp_path / "run" / "params")["class_names"] == ["square"]
    metrics, _, _, truths = evaluation.evaluate_split(params, model_config, sources.open_source("squares"),
                                                      batch_size=4)
    assert len(truths) == 8 and metrics["voc07_mAP"] == pytest.approx(last["voc07_mAP"])
    sources.unregister("squares")
    assert "square_count" not in train.default_config()  # gone with its source
