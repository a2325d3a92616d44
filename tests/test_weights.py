"""Weight import without torch: key layouts, transposes, BGR flip, error messages, file readers."""

import json
import os

import jax
import numpy as np
import pytest
from jax import lax

from ssd_jax import checkpoint, configs, weights
from ssd_jax.models import param_shapes, vgg

DATA = os.path.join(os.path.dirname(__file__), "data")


def random_state_dict(shapes: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def torchvision_state_dict(seed=0) -> dict:
    with open(os.path.join(DATA, "torchvision_ssd300_vgg16_shapes.json")) as f:
        return random_state_dict(json.load(f)["shapes"], seed)


def amdegroot_shapes(num_classes=21) -> dict:
    """The amdegroot SSD300 layout, written out from its architecture."""
    convs = {}
    vgg = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
           (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)]
    for index, cin, cout in vgg:
        convs[f"vgg.{index}"] = (cout, cin, 3, 3)
    convs["vgg.31"] = (1024, 512, 3, 3)
    convs["vgg.33"] = (1024, 1024, 1, 1)
    extras = [(1024, 256, 1), (256, 512, 3), (512, 128, 1), (128, 256, 3), (256, 128, 1), (128, 256, 3),
              (256, 128, 1), (128, 256, 3)]
    for i, (cin, cout, k) in enumerate(extras):
        convs[f"extras.{i}"] = (cout, cin, k, k)
    for i, (cin, boxes) in enumerate(zip((512, 1024, 512, 256, 256, 256), (4, 6, 6, 6, 4, 4))):
        convs[f"loc.{i}"] = (boxes * 4, cin, 3, 3)
        convs[f"conf.{i}"] = (boxes * num_classes, cin, 3, 3)
    shapes = {"L2Norm.weight": (512,)}
    for key, shape in convs.items():
        shapes[f"{key}.weight"] = shape
        shapes[f"{key}.bias"] = (shape[0],)
    return shapes


def hwio(weight):
    return weight.transpose(2, 3, 1, 0)


def test_torchvision_layout_converts_every_parameter():
    state = torchvision_state_dict()
    params = weights.from_torchvision(state)
    assert sum(np.size(a) for a in jax.tree.leaves(params)) == 35_641_826
    np.testing.assert_array_equal(params["backbone"]["conv1_1"]["kernel"], hwio(state["backbone.features.0.weight"]))
    np.testing.assert_array_equal(params["backbone"]["conv4_3"]["bias"], state["backbone.features.21.bias"])
    np.testing.assert_array_equal(params["backbone"]["conv5_2"]["kernel"], hwio(state["backbone.extra.0.3.weight"]))
    np.testing.assert_array_equal(params["backbone"]["fc6"]["kernel"], hwio(state["backbone.extra.0.7.1.weight"]))
    np.testing.assert_array_equal(params["backbone"]["fc7"]["kernel"], hwio(state["backbone.extra.0.7.3.weight"]))
    np.testing.assert_array_equal(params["backbone"]["conv4_3_norm"]["scale"], state["backbone.scale_weight"])
    np.testing.assert_array_equal(params["extra3_2"]["kernel"], hwio(state["backbone.extra.3.2.weight"]))
    np.testing.assert_array_equal(params["loc_5"]["kernel"],
                                  hwio(state["head.regression_head.module_list.5.weight"]))
    np.testing.assert_array_equal(params["conf_2"]["bias"], state["head.classification_head.module_list.2.bias"])


def test_torchvision_class_count_is_inferred():
    state = torchvision_state_dict()
    for i, boxes in enumerate((4, 6, 6, 6, 4, 4)):  # a 21-class head
        key = f"head.classification_head.module_list.{i}"
        state[f"{key}.weight"] = state[f"{key}.weight"][: boxes * 21]
        state[f"{key}.bias"] = state[f"{key}.bias"][: boxes * 21]
    assert weights.torchvision_config(state) == configs.ssd300_torchvision(num_classes=21)
    params = weights.from_torchvision(state)
    assert params["conf_0"]["kernel"].shape == (3, 3, 512, 84)


def test_unknown_missing_and_misshapen_keys_are_named():
    state = torchvision_state_dict()
    with pytest.raises(weights.WeightImportError, match=r"unexpected keys.*backbone\.bogus"):
        weights.from_torchvision({**state, "backbone.bogus": np.zeros(3)})
    missing = dict(state)
    del missing["backbone.extra.2.0.bias"]
    with pytest.raises(weights.WeightImportError, match=r"missing keys.*backbone\.extra\.2\.0\.bias"):
        weights.from_torchvision(missing)
    wrong = dict(state)
    wrong["backbone.extra.0.7.3.weight"] = np.zeros((1024, 512, 1, 1), np.float32)
    with pytest.raises(weights.WeightImportError, match=r"backbone\.extra\.0\.7\.3.*fc7.*\(1, 1, 512, 1024\)"):
        weights.from_torchvision(wrong)
    with pytest.raises(weights.WeightImportError, match="missing key"):
        weights.from_torchvision({"something.else": np.zeros(1)})


def test_amdegroot_layout_flips_bgr_to_rgb():
    state = random_state_dict(amdegroot_shapes(21))
    params = weights.from_amdegroot(state)
    assert params["conf_0"]["kernel"].shape == (3, 3, 512, 4 * 21)
    # conv1_1 saw BGR; our input is RGB: input channel c of ours is channel 2 - c of theirs.
    ours = params["backbone"]["conv1_1"]["kernel"]
    theirs = hwio(state["vgg.0.weight"])
    for c in range(3):
        np.testing.assert_array_equal(ours[:, :, c, :], theirs[:, :, 2 - c, :])
    np.testing.assert_array_equal(params["backbone"]["conv1_2"]["kernel"], hwio(state["vgg.2.weight"]))
    np.testing.assert_array_equal(params["backbone"]["fc6"]["kernel"], hwio(state["vgg.31.weight"]))
    np.testing.assert_array_equal(params["extra2_1"]["kernel"], hwio(state["extras.2.weight"]))
    np.testing.assert_array_equal(params["extra2_2"]["kernel"], hwio(state["extras.3.weight"]))
    np.testing.assert_array_equal(params["backbone"]["conv4_3_norm"]["scale"], state["L2Norm.weight"])
    assert jax.tree.structure(params) == jax.tree.structure(param_shapes(configs.ssd300()))


def vgg16_state_dict(reduced_fc: bool, seed=0) -> dict:
    shapes = {k: v for k, v in amdegroot_shapes().items() if k.startswith("vgg.")}
    if reduced_fc:  # bare keys as in vgg16_reducedfc.pth
        return random_state_dict({k[len("vgg."):]: v for k, v in shapes.items()}, seed)
    shapes = {k.replace("vgg.", "features."): v for k, v in shapes.items() if not k.startswith(("vgg.31", "vgg.33"))}
    shapes.update({"classifier.0.weight": (16, 8), "classifier.0.bias": (16,)})  # ignored
    return random_state_dict(shapes, seed)


def test_vgg16_reduced_fc_fills_the_whole_base():
    state = vgg16_state_dict(reduced_fc=True)
    tree = weights.from_vgg16(state, bgr=True)
    assert sorted(tree["backbone"]) == sorted(vgg.VGG_CONV_NAMES + ("fc6", "fc7"))
    np.testing.assert_array_equal(tree["backbone"]["fc7"]["kernel"], hwio(state["33.weight"]))
    np.testing.assert_array_equal(tree["backbone"]["conv1_1"]["kernel"][:, :, 0], hwio(state["0.weight"])[:, :, 2])


def test_vgg16_torchvision_normalisation_is_folded_into_conv1_1():
    state = vgg16_state_dict(reduced_fc=False)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    tree = weights.from_vgg16(state, input_mean=mean, input_std=std)
    assert "fc6" not in tree["backbone"]  # torchvision's classifier is not the reduced fc
    pixels = np.random.default_rng(1).uniform(0, 255, (1, 12, 12, 3)).astype(np.float32)

    def conv(x, kernel, bias):
        return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias

    theirs = conv((pixels / 255 - np.array(mean)) / np.array(std), hwio(state["features.0.weight"]),
                  state["features.0.bias"])
    layer = tree["backbone"]["conv1_1"]
    ours = conv(pixels - np.array(configs.IMAGENET_MEAN_RGB), layer["kernel"], layer["bias"])
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-3)


def test_merge_backbone_keeps_heads_and_rejects_misfits():
    config = configs.ssd300()
    params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), param_shapes(config))
    tree = weights.from_vgg16(vgg16_state_dict(reduced_fc=True))
    merged = weights.merge_backbone(params, tree)
    np.testing.assert_array_equal(merged["backbone"]["conv3_2"]["kernel"], tree["backbone"]["conv3_2"]["kernel"])
    assert np.all(params["backbone"]["conv3_2"]["kernel"] == 0)  # the input is not mutated
    assert np.all(merged["loc_0"]["kernel"] == 0)
    tiny = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), param_shapes(configs.ssd_tiny()))
    with pytest.raises(weights.WeightImportError, match="conv1_1"):
        weights.merge_backbone(tiny, tree)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_weight_files_round_trip(tmp_path, suffix):
    state = torchvision_state_dict()
    path = str(tmp_path / f"weights{suffix}")
    if suffix == ".npz":
        np.savez(path, **state)
    else:
        from safetensors.numpy import save_file
        save_file(state, path)
    loaded = weights.load_state_dict(path)
    assert loaded.keys() == state.keys()
    np.testing.assert_array_equal(loaded["backbone.scale_weight"], state["backbone.scale_weight"])


def test_weight_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        weights.load_state_dict(tmp_path / "absent.npz")
    odd = tmp_path / "weights.h5"
    odd.write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported weight file"):
        weights.load_state_dict(odd)
    pickled = tmp_path / "objects.npz"
    np.savez(pickled, a=np.array([{"x": 1}], dtype=object))  # npz holding pickled objects
    with pytest.raises(ValueError):
        weights.load_state_dict(pickled)  # allow_pickle=False: nothing is unpickled


def test_checkpoint_round_trip_and_refusals(tmp_path):
    config = configs.ssd_tiny(num_classes=5)
    params = jax.tree.map(lambda s: np.random.default_rng(0).normal(size=s.shape).astype(np.float32),
                          param_shapes(config))
    directory = checkpoint.save_params(tmp_path / "ckpt", params, config)
    restored, stored_config = checkpoint.load_params(directory)
    assert stored_config == config
    assert jax.tree.all(jax.tree.map(np.array_equal, params, restored))
    with pytest.raises(FileExistsError):
        checkpoint.save_params(directory, params, config)
    with pytest.raises(ValueError, match=r"do not fit config 'ssd_tiny' \(7 classes\)"):
        checkpoint.load_params(directory, configs.ssd_tiny(num_classes=7))
    with pytest.raises(FileNotFoundError, match="not a complete"):
        checkpoint.load_params(tmp_path / "nothing")
    # A save that died before orbax finished leaves no params/ directory: it must not load.
    half = tmp_path / "half"
    half.mkdir()
    (half / checkpoint.CONFIG_FILE).write_text(json.dumps({"config": configs.to_dict(config)}))
    with pytest.raises(FileNotFoundError, match="not a complete"):
        checkpoint.load_params(half)
