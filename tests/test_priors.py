"""Default boxes: hand-computed boxes at both ends of every source, and the numpy reference."""

import dataclasses
from math import sqrt

import numpy as np
import pytest
import reference as ref

import ssd_jax
from ssd_jax import configs

PRESET_NAMES = ["ssd300", "ssd300_coco", "ssd300_torchvision", "ssd512", "ssd_tiny"]


def assert_boxes(actual, expected):
    np.testing.assert_allclose(actual, np.asarray(expected, np.float64), rtol=1e-6, atol=1e-7)


def with_center(cx, cy, shapes):
    return [(cx, cy, w, h) for w, h in shapes]


# SSD300 (VOC sizes). Per source: (first index, boxes per cell, feature map size, shapes (w, h)),
# every number written out from the paper's table: steps 8, 16, 32, 64, 100, 300; sizes 30, 60,
# 111, 162, 213, 264, 315 pixels; ratios [2], [2, 3], [2, 3], [2, 3], [2], [2].
SSD300_SOURCES = [
    # conv4_3: 38x38, 4 boxes, starts at 0.
    (
        0,
        38,
        [
            (30 / 300, 30 / 300),
            (sqrt(30 * 60) / 300, sqrt(30 * 60) / 300),
            (30 * sqrt(2) / 300, 30 / sqrt(2) / 300),
            (30 / sqrt(2) / 300, 30 * sqrt(2) / 300),
        ],
    ),
    # fc7: 19x19, 6 boxes, starts at 38*38*4 = 5776.
    (
        38 * 38 * 4,
        19,
        [
            (60 / 300, 60 / 300),
            (sqrt(60 * 111) / 300, sqrt(60 * 111) / 300),
            (60 * sqrt(2) / 300, 60 / sqrt(2) / 300),
            (60 / sqrt(2) / 300, 60 * sqrt(2) / 300),
            (60 * sqrt(3) / 300, 60 / sqrt(3) / 300),
            (60 / sqrt(3) / 300, 60 * sqrt(3) / 300),
        ],
    ),
    # extra1: 10x10, 6 boxes, starts at 5776 + 19*19*6 = 7942.
    (
        5776 + 19 * 19 * 6,
        10,
        [
            (111 / 300, 111 / 300),
            (sqrt(111 * 162) / 300, sqrt(111 * 162) / 300),
            (111 * sqrt(2) / 300, 111 / sqrt(2) / 300),
            (111 / sqrt(2) / 300, 111 * sqrt(2) / 300),
            (111 * sqrt(3) / 300, 111 / sqrt(3) / 300),
            (111 / sqrt(3) / 300, 111 * sqrt(3) / 300),
        ],
    ),
    # extra2: 5x5, 6 boxes, starts at 7942 + 10*10*6 = 8542.
    (
        7942 + 10 * 10 * 6,
        5,
        [
            (162 / 300, 162 / 300),
            (sqrt(162 * 213) / 300, sqrt(162 * 213) / 300),
            (162 * sqrt(2) / 300, 162 / sqrt(2) / 300),
            (162 / sqrt(2) / 300, 162 * sqrt(2) / 300),
            (162 * sqrt(3) / 300, 162 / sqrt(3) / 300),
            (162 / sqrt(3) / 300, 162 * sqrt(3) / 300),
        ],
    ),
    # extra3: 3x3, 4 boxes, starts at 8542 + 5*5*6 = 8692.
    (
        8542 + 5 * 5 * 6,
        3,
        [
            (213 / 300, 213 / 300),
            (sqrt(213 * 264) / 300, sqrt(213 * 264) / 300),
            (213 * sqrt(2) / 300, 213 / sqrt(2) / 300),
            (213 / sqrt(2) / 300, 213 * sqrt(2) / 300),
        ],
    ),
    # extra4: 1x1, 4 boxes, starts at 8692 + 3*3*4 = 8728.
    (
        8692 + 3 * 3 * 4,
        1,
        [
            (264 / 300, 264 / 300),
            (sqrt(264 * 315) / 300, sqrt(264 * 315) / 300),
            (264 * sqrt(2) / 300, 264 / sqrt(2) / 300),
            (264 / sqrt(2) / 300, 264 * sqrt(2) / 300),
        ],
    ),
]

# First and last cell centres of each SSD300 source: (0.5 * step / 300, (f - 0.5) * step / 300).
SSD300_CENTERS = [
    (4 / 300, 37.5 * 8 / 300),  # = 1.0
    (8 / 300, 18.5 * 16 / 300),  # = 296 / 300
    (16 / 300, 9.5 * 32 / 300),  # = 304 / 300 (outside the image: Caffe does not clip)
    (32 / 300, 4.5 * 64 / 300),  # = 288 / 300
    (50 / 300, 250 / 300),
    (150 / 300, 150 / 300),
]


def test_ssd300_first_cell_of_source_0_by_hand():
    boxes = ssd_jax.priors(configs.ssd300())
    c = 4 / 300
    assert_boxes(
        boxes[:4],
        [
            (c, c, 30 / 300, 30 / 300),
            (c, c, sqrt(30 * 60) / 300, sqrt(30 * 60) / 300),
            (c, c, 30 * sqrt(2) / 300, 30 / sqrt(2) / 300),
            (c, c, 30 / sqrt(2) / 300, 30 * sqrt(2) / 300),
        ],
    )
    # The second cell of the first row moves along x by one step (8 pixels), not along y.
    assert_boxes(boxes[4:8, :2], [(12 / 300, 4 / 300)] * 4)
    # The first cell of the second row moves along y.
    assert_boxes(boxes[38 * 4 : 38 * 4 + 4, :2], [(4 / 300, 12 / 300)] * 4)


@pytest.mark.parametrize("source", range(6))
def test_ssd300_first_and_last_cell_of_each_source_by_hand(source):
    boxes = ssd_jax.priors(configs.ssd300())
    start, fmap, shapes = SSD300_SOURCES[source]
    first, last = SSD300_CENTERS[source]
    a = len(shapes)
    assert_boxes(boxes[start : start + a], with_center(first, first, shapes))
    last_start = start + (fmap * fmap - 1) * a
    assert_boxes(boxes[last_start : last_start + a], with_center(last, last, shapes))
    # Last cell of the first row: x at the far end, y at the near end.
    row_end = start + (fmap - 1) * a
    assert_boxes(boxes[row_end : row_end + a], with_center(last, first, shapes))
    # The source ends where the next begins.
    next_start = SSD300_SOURCES[source + 1][0] if source < 5 else 8732
    assert last_start + a == next_start


def test_ssd512_boxes_by_hand():
    boxes = ssd_jax.priors(configs.ssd512())
    assert boxes.shape == (24564, 4)
    # Source 0: 64x64, step 8, sizes 35.84 -> 76.8, ratio 2.
    shapes0 = [
        (35.84 / 512, 35.84 / 512),
        (sqrt(35.84 * 76.8) / 512, sqrt(35.84 * 76.8) / 512),
        (35.84 * sqrt(2) / 512, 35.84 / sqrt(2) / 512),
        (35.84 / sqrt(2) / 512, 35.84 * sqrt(2) / 512),
    ]
    assert_boxes(boxes[0:4], with_center(4 / 512, 4 / 512, shapes0))
    last0 = (64 * 64 - 1) * 4
    assert_boxes(boxes[last0 : last0 + 4], with_center(508 / 512, 508 / 512, shapes0))
    # Source 1: 32x32, step 16, sizes 76.8 -> 153.6, ratios 2 and 3; starts at 64*64*4.
    start1 = 64 * 64 * 4
    shapes1 = [
        (76.8 / 512, 76.8 / 512),
        (sqrt(76.8 * 153.6) / 512, sqrt(76.8 * 153.6) / 512),
        (76.8 * sqrt(2) / 512, 76.8 / sqrt(2) / 512),
        (76.8 / sqrt(2) / 512, 76.8 * sqrt(2) / 512),
        (76.8 * sqrt(3) / 512, 76.8 / sqrt(3) / 512),
        (76.8 / sqrt(3) / 512, 76.8 * sqrt(3) / 512),
    ]
    assert_boxes(boxes[start1 : start1 + 6], with_center(8 / 512, 8 / 512, shapes1))
    # Source 5: 2x2, step 256, sizes 384 -> 460.8, ratio 2; its last cell is centred at 384/512.
    start5 = 24564 - 4 - 2 * 2 * 4
    shapes5 = [
        (384 / 512, 384 / 512),
        (sqrt(384 * 460.8) / 512, sqrt(384 * 460.8) / 512),
        (384 * sqrt(2) / 512, 384 / sqrt(2) / 512),
        (384 / sqrt(2) / 512, 384 * sqrt(2) / 512),
    ]
    assert_boxes(boxes[start5 : start5 + 4], with_center(128 / 512, 128 / 512, shapes5))
    assert_boxes(boxes[start5 + 12 : start5 + 16], with_center(384 / 512, 384 / 512, shapes5))
    # Source 6: 1x1, step 512, sizes 460.8 -> 537.6, ratio 2: the very last four boxes.
    shapes6 = [
        (460.8 / 512, 460.8 / 512),
        (sqrt(460.8 * 537.6) / 512, sqrt(460.8 * 537.6) / 512),
        (460.8 * sqrt(2) / 512, 460.8 / sqrt(2) / 512),
        (460.8 / sqrt(2) / 512, 460.8 * sqrt(2) / 512),
    ]
    assert_boxes(boxes[-4:], with_center(0.5, 0.5, shapes6))


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_priors_match_reference(name):
    cfg = configs.get(name)
    boxes = ssd_jax.priors(cfg)
    expected = ref.priors(cfg)
    assert boxes.shape == expected.shape == (cfg.num_priors, 4)
    assert boxes.dtype == np.float32
    np.testing.assert_allclose(boxes, expected, rtol=1e-6, atol=1e-7)


def test_clip_all_matches_reference():
    cfg = dataclasses.replace(configs.ssd300(), prior_clip="all")
    boxes = ssd_jax.priors(cfg)
    np.testing.assert_allclose(boxes, ref.priors(cfg), rtol=1e-6, atol=1e-7)
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0
    # extra1's last cell is centred at 304/300 unclipped; 'all' clamps the centre too.
    last = 7942 + 99 * 6
    assert boxes[last, 0] == 1.0 and boxes[last, 1] == 1.0
    assert boxes[last + 4, 2] == pytest.approx(111 * sqrt(3) / 300, rel=1e-6)  # < 1: untouched
    assert boxes[8730, 2] == 1.0  # 264*sqrt(2)/300 > 1
    unclipped = ssd_jax.priors(configs.ssd300())
    assert unclipped[last, 0] == pytest.approx(304 / 300, rel=1e-6)
    assert unclipped[8730, 2] == pytest.approx(264 * sqrt(2) / 300, rel=1e-6)


def test_torchvision_clamps_only_width_and_height():
    coco = ssd_jax.priors(configs.ssd300_coco())
    tv = ssd_jax.priors(configs.ssd300_torchvision())
    # Last source (1x1, s = 261/300, ratio 2): box 8730 is (s*sqrt(2), s/sqrt(2)), wider than the image.
    assert coco[8730, 2] == pytest.approx(261 * sqrt(2) / 300, rel=1e-6)
    assert coco[8730, 2] > 1.0
    assert tv[8730, 2] == 1.0
    assert tv[8730, 3] == pytest.approx(261 / sqrt(2) / 300, rel=1e-6)
    assert tv[8731, 3] == 1.0 and coco[8731, 3] > 1.0
    # Centres are not clamped: extra1's last cell (304/300) stays outside the image.
    last = 7942 + 99 * 6
    assert tv[last, 0] == pytest.approx(304 / 300, rel=1e-6)
    assert tv[:, 2:].max() == 1.0
    # Only the clamped entries differ between the two.
    differs = coco != tv
    assert not differs[:, :2].any()
    np.testing.assert_array_equal(np.minimum(coco, 1.0)[:, 2:], tv[:, 2:])
    assert differs.sum() == (coco[:, 2:] > 1.0).sum() > 0


def test_priors_are_cached_and_read_only():
    cfg = configs.ssd_tiny()
    boxes = ssd_jax.priors(cfg)
    assert ssd_jax.priors(configs.ssd_tiny()) is boxes
    with pytest.raises(ValueError):
        boxes[0, 0] = 0.5
