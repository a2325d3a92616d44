"""SSDConfig presets: lookup, immutability, hashability, validation and prior counts."""

import dataclasses

import numpy as np
import pytest

import ssd_jax
from ssd_jax import configs

PRESET_NAMES = ["ssd300", "ssd300_coco", "ssd300_torchvision", "ssd512", "ssd_tiny"]

EXPECTED_NUM_PRIORS = {
    # 38^2*4 + 19^2*6 + 10^2*6 + 5^2*6 + 3^2*4 + 1*4
    "ssd300": 38 * 38 * 4 + 19 * 19 * 6 + 10 * 10 * 6 + 5 * 5 * 6 + 3 * 3 * 4 + 1 * 4,
    "ssd300_coco": 8732,
    "ssd300_torchvision": 8732,
    # 64^2*4 + 32^2*6 + 16^2*6 + 8^2*6 + 4^2*6 + 2^2*4 + 1*4
    "ssd512": 24564,
    # 20^2*4 + 10^2*6 + 5^2*6 + 3^2*4 + 1*4
    "ssd_tiny": 16 * 16 * 4 + 8 * 8 * 6 + 4 * 4 * 6 + 2 * 2 * 4 + 1 * 4,
}


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_lookup_and_name(name):
    direct = getattr(configs, name)()
    looked_up = configs.get(name)
    assert isinstance(direct, configs.SSDConfig)
    assert direct == looked_up
    assert direct.name == name


def test_get_passes_kwargs_and_rejects_unknown():
    assert configs.get("ssd300", num_classes=5).num_classes == 5
    with pytest.raises(ValueError, match="nope"):
        configs.get("nope")


def test_expected_class_counts():
    assert configs.ssd300().num_classes == 21
    assert configs.ssd300_coco().num_classes == 81
    assert configs.ssd300_torchvision().num_classes == 91
    assert configs.ssd512().num_classes == 21
    assert configs.ssd300_torchvision().prior_clip == "wh"
    assert configs.ssd300().prior_clip == "none"


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_frozen_and_hashable(name):
    cfg = configs.get(name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_classes = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.image_size = 1
    # Equal configs hash equally and work as dict keys.
    cache = {cfg: name}
    assert cache[configs.get(name)] == name
    assert hash(cfg) == hash(configs.get(name))


def test_distinct_presets_are_distinct_keys():
    cache = {configs.get(n): n for n in PRESET_NAMES}
    assert len(cache) == len(PRESET_NAMES)
    assert configs.ssd300() != configs.ssd300(num_classes=5)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_num_priors_and_priors_array(name):
    cfg = configs.get(name)
    assert cfg.num_priors == EXPECTED_NUM_PRIORS[name]
    boxes = ssd_jax.priors(cfg)
    assert boxes.shape == (EXPECTED_NUM_PRIORS[name], 4)
    assert boxes.dtype == np.float32


def test_paper_prior_counts():
    assert configs.ssd300().num_priors == 8732
    assert configs.ssd512().num_priors == 24564
    assert configs.ssd300().boxes_per_location == (4, 6, 6, 6, 4, 4)
    assert configs.ssd512().boxes_per_location == (4, 6, 6, 6, 6, 4, 4)
    assert configs.ssd300().feature_map_sizes == (38, 19, 10, 5, 3, 1)
    assert configs.ssd512().feature_map_sizes == (64, 32, 16, 8, 4, 2, 1)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"steps": (8, 16, 32)}, "steps"),
        ({"min_sizes": (30.0, 60.0)}, "min_sizes"),
        ({"max_sizes": (60.0,) * 7}, "max_sizes"),
        ({"aspect_ratios": ((2.0,),) * 5}, "aspect_ratios"),
        ({"feature_map_sizes": (38, 19, 10, 5, 3)}, "feature_map_sizes"),
        ({"feature_map_sizes": (37, 19, 10, 5, 3, 1)}, "feature_map_sizes"),
        ({"feature_map_sizes": (38, 19, 10, 5, 2, 1)}, "feature_map_sizes"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 0}, "num_classes"),
        ({"prior_clip": "both"}, "prior_clip"),
        ({"prior_clip": "WH"}, "prior_clip"),
        ({"min_sizes": (70.0, 60.0, 111.0, 162.0, 213.0, 264.0)}, "min_size"),
        ({"max_sizes": (60.0, 111.0, 162.0, 213.0, 264.0, 200.0)}, "max_size"),
    ],
)
def test_invalid_configs_raise_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(configs.ssd300(), **changes)


def test_valid_replace_still_works():
    cfg = dataclasses.replace(configs.ssd300(), prior_clip="all", num_classes=2)
    assert cfg.prior_clip == "all"
    assert cfg.num_classes == 2
    assert cfg.num_priors == 8732
