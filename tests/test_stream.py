"""ssd_jax.detect_stream: every frame's detections as detect gives them on that frame alone, in
order, with one compilation for a stream of changing frame sizes; bad frames and failing sources
named after the frames before them; the next batch read while the current one is detected."""

import itertools

import jax
import numpy as np
import pytest
from random_models import spread_params

import ssd_jax
from ssd_jax import configs
from ssd_jax.detect import _detect
from ssd_jax.stream import FrameError

CONFIG = configs.ssd_tiny(num_classes=4)
SIZES = [(100, 120), (90, 160), (128, 128)]


@pytest.fixture(scope="module")
def params():
    return jax.tree.map(np.asarray, spread_params(CONFIG))


def frame(index):
    height, width = SIZES[index % len(SIZES)]
    return np.random.default_rng(index).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_each_frame_gets_detects_detections_in_order_with_one_compilation(params):
    frames = [frame(i) for i in range(19)]  # 8 + 8 + 3: the last batch padded
    before = _detect._cache_size()
    results = list(ssd_jax.detect_stream(params, iter(frames), config=CONFIG, batch_size=8))
    assert _detect._cache_size() - before <= 1  # one program for every size and the short batch
    assert len(results) == len(frames)
    found = 0
    for image, result in zip(frames, results):
        alone = ssd_jax.detect(params, image[None], config=CONFIG)
        n = int(alone.num_detections[0])
        assert result.boxes.shape == alone.boxes.shape and int(result.num_detections[0]) == n
        np.testing.assert_array_equal(result.classes[0, :n], alone.classes[0, :n])
        np.testing.assert_allclose(result.scores[0, :n], alone.scores[0, :n], atol=1e-5)
        np.testing.assert_allclose(result.boxes[0, :n], alone.boxes[0, :n], atol=1e-5)
        found += n
    assert found > len(frames)  # detections to compare, not empty frames


def test_the_next_batch_is_read_before_the_current_one_is_returned(params):
    events = []

    def frames():
        for i in range(24):
            events.append(("read", i))
            yield frame(i)

    for i, _ in enumerate(ssd_jax.detect_stream(params, frames(), config=CONFIG, batch_size=8)):
        events.append(("result", i))
    first_result = events.index(("result", 0))
    assert ("read", 15) in events[:first_result]  # batch 2 was read (and dispatched) before batch 1 came back


def test_a_bad_frame_is_named_after_the_frames_before_it(params):
    frames = [frame(0), frame(1), np.zeros((10, 10), np.uint8), frame(3)]
    stream = ssd_jax.detect_stream(params, frames, config=CONFIG, batch_size=2)
    got = [next(stream), next(stream)]
    with pytest.raises(FrameError, match=r"frame 2: expected an RGB image \[H, W, 3\]"):
        next(stream)
    assert len(got) == 2
    nan = frame(0).astype(np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(FrameError, match="frame 1: 1 of 12000 pixels are NaN or infinite"):
        list(ssd_jax.detect_stream(params, [frame(0), nan], config=CONFIG, batch_size=4))


def test_a_failing_source_raises_after_the_frames_it_gave(params):
    def frames():
        for i in range(6):
            yield frame(i)
        raise OSError("the camera was unplugged")

    got = []
    with pytest.raises(OSError, match="unplugged"):
        for result in ssd_jax.detect_stream(params, frames(), config=CONFIG, batch_size=4):
            got.append(result)
    assert len(got) == 6


def test_stopping_early_stops_reading_the_source(params):
    read = []

    def endless():
        for i in itertools.count():
            read.append(i)
            yield frame(i)

    stream = ssd_jax.detect_stream(params, endless(), config=CONFIG, batch_size=4, prefetch=1)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    count = len(read)
    assert count < 40  # read ahead by a few batches at most
    import time

    time.sleep(0.5)
    assert len(read) == count  # and no more once the stream is closed
    with pytest.raises(ValueError, match="batch_size and prefetch must be >= 1"):
        next(ssd_jax.detect_stream(params, [], config=CONFIG, batch_size=0))
