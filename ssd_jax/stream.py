"""Detection on a stream of frames (a video, a camera, any iterable of images) at the device's pace.

``detect_stream(params, frames, config=...)`` yields, for each frame in order, the ``Detections``
that ``detect`` gives that frame alone. Inside, every batch has one shape: each frame is resized
to the model's input size on the host (``detect``'s bilinear resize, run on the CPU), frames are
grouped ``batch_size`` at a time and a short last batch is padded, so a whole stream compiles the
detection program once, whatever the frame sizes. A thread reads and resizes the next batch while
the device works on the current one, and the detections of a batch are read back only once the
next one has been dispatched, so neither side waits for the other.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterable, Iterator

import jax
import numpy as np

from ssd_jax.configs import SSDConfig
from ssd_jax.detect import DetectOptions, detect, resize_images
from ssd_jax.detect import _check_pixels as check_pixels
from ssd_jax.nms import Detections

_END = object()  # the producer's last item: the frames are exhausted


class FrameError(ValueError):
    """A frame that cannot be detected on (wrong shape, dtype or values); names the frame."""


def _cpu():
    return jax.devices("cpu")[0]


_resize_on_cpu = jax.jit(resize_images, static_argnums=1)


def prepare_frame(frame, size: int, index: int) -> np.ndarray:
    """One frame [H, W, 3] (uint8, or float in [0, 255]) -> float32 [size, size, 3], resized as
    ``detect`` resizes; ``FrameError`` naming frame ``index`` if it is not an image."""
    frame = np.asarray(frame)
    if frame.ndim != 3:
        raise FrameError(f"frame {index}: expected an RGB image [H, W, 3], got an array of shape {frame.shape}")
    try:
        check_pixels(frame, rank=3, what=f"frame {index}")
    except ValueError as error:
        raise FrameError(str(error)) from error
    with jax.default_device(_cpu()):
        return np.asarray(_resize_on_cpu(frame[None], size)[0])


def _batches(frames: Iterable, size: int, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """frames -> (float32 [batch_size, size, size, 3] padded with zeros, the number of real frames).
    A frame that fails (or a source that raises) ends it after the batch of the frames before."""
    batch = np.zeros((batch_size, size, size, 3), np.float32)
    count = 0
    iterator = iter(frames)
    for index in itertools.count():
        try:
            frame = next(iterator)
        except StopIteration:
            break
        except BaseException:
            if count:
                yield batch, count
            raise
        try:
            batch[count] = prepare_frame(frame, size, index)
        except FrameError:
            if count:
                yield batch, count
            raise
        count += 1
        if count == batch_size:
            yield batch, count
            batch, count = np.zeros_like(batch), 0
    if count:
        yield batch, count


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    """Puts ``item`` unless the consumer has stopped -> whether it was put."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _produce(frames, size: int, batch_size: int, out: queue.Queue, stop: threading.Event) -> None:
    """Runs in a thread: puts each prepared batch, then ``_END`` (or the exception that ended it)."""
    try:
        for item in _batches(frames, size, batch_size):
            if not _put(out, item, stop):
                return
        _put(out, _END, stop)
    except BaseException as error:  # handed to the consumer, which raises it in the caller's thread
        _put(out, error, stop)


def _frames_of(detections: Detections, count: int) -> Iterator[Detections]:
    host = Detections(*(np.asarray(x) for x in detections))
    for i in range(count):
        yield Detections(*(x[i:i + 1] for x in host))


def detect_stream(params, frames: Iterable, *, config: SSDConfig, batch_size: int = 8,
                  options: DetectOptions | None = None, prefetch: int = 2, **overrides) -> Iterator[Detections]:
    """Detects objects in every frame of ``frames``, in order, one batch at a time.

    Args:
      params: the model's 'params' pytree.
      frames: any iterable of RGB frames [H, W, 3], uint8 (or float in [0, 255]); sizes may change
        from frame to frame. It is read in a background thread, ``prefetch`` batches ahead.
      config: the model config.
      batch_size: frames per ``detect`` call; the last batch is padded (one compilation per stream).
      options, overrides: ``detect``'s options (``DetectOptions`` and its fields by name).
    Yields:
      per frame, ``Detections`` of batch 1 (numpy arrays: boxes [1, K, 4] normalised, scores
      [1, K], classes [1, K], num_detections [1]): those of ``detect(params, frame[None])`` to
      float rounding (the resize runs before the program instead of inside it).
    Raises:
      ``FrameError`` for a frame that is not an image (naming its index, after the frames before
      it have been yielded); whatever reading ``frames`` raises.
    """
    if batch_size < 1 or prefetch < 1:
        raise ValueError(f"batch_size and prefetch must be >= 1, got {batch_size} and {prefetch}")
    ready: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(frames, config.image_size, batch_size, ready, stop),
                                name="ssd_jax.detect_stream", daemon=True)
    producer.start()
    pending = None  # (device detections, real frame count) of the batch dispatched before
    try:
        while True:
            item = ready.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                if pending is not None:  # the frames before the failure first
                    yield from _frames_of(*pending)
                    pending = None
                raise item
            batch, count = item
            current = (detect(params, batch, config=config, options=options, **overrides), count)
            if pending is not None:
                yield from _frames_of(*pending)
            pending = current
        if pending is not None:
            yield from _frames_of(*pending)
    finally:  # also when the caller stops early (break, Ctrl-C): the thread stops reading frames
        stop.set()
        producer.join(timeout=1.0)  # a daemon: a frame source blocked in a read cannot hold the caller
