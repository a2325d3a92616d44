"""ssd_jax.video: videos written and read back frame for frame (PyAV), damaged files and missing
cameras reported in one line, a damaged stretch skipped and counted, and detect_stream on a video."""

import os

import numpy as np
import pytest

pytest.importorskip("av", reason="video needs PyAV: pip install -e '.[video]'")

import ssd_jax  # noqa: E402
from ssd_jax import configs, video  # noqa: E402


def moving_square(index, height=96, width=128):
    """A frame whose content says its index: a bright square moving right on a dark gradient."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 2] = np.linspace(0, 120, width, dtype=np.uint8)[None, :]
    x = 4 + 3 * index
    pixels[30:60, x:x + 30] = (230, 200, 40)
    return pixels


def write_video(path, count, fps=12.0, **size):
    writer = video.VideoWriter(str(path), fps=fps, **size)
    try:
        for i in range(count):
            writer.write(moving_square(i, size["height"], size["width"]))
    finally:
        writer.close()
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".webm"])
def test_a_written_video_reads_back_frame_for_frame(tmp_path, suffix):
    path = write_video(tmp_path / f"clip{suffix}", 20, height=96, width=128)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary file left
    reader = video.open_video(str(path))
    assert (reader.width, reader.height) == (128, 96) and reader.fps == pytest.approx(12.0)
    frames = list(reader.frames())
    reader.close()
    assert [f.index for f in frames] == list(range(20)) and reader.skipped == 0
    np.testing.assert_allclose([f.time for f in frames], np.arange(20) / 12.0, atol=1e-3)
    for frame in frames:  # lossy codecs: near the original, and nearer it than any other frame
        errors = [np.abs(frame.pixels.astype(int) - moving_square(i)).mean() for i in range(20)]
        assert int(np.argmin(errors)) == frame.index and errors[frame.index] < 6


def test_start_and_max_frames(tmp_path):
    path = write_video(tmp_path / "clip.mp4", 24, height=96, width=128)
    reader = video.open_video(str(path))
    frames = list(reader.frames(start=1.0, max_frames=5))
    assert len(frames) == 5 and frames[0].time == pytest.approx(1.0, abs=1e-3)
    assert [f.index for f in frames] == list(range(5))  # positions among the frames given
    errors = [np.abs(frames[0].pixels.astype(int) - moving_square(i)).mean() for i in range(24)]
    assert int(np.argmin(errors)) == 12  # the frame at 1 s of a 12 fps video


def test_odd_frame_sizes_are_written(tmp_path):
    path = write_video(tmp_path / "odd.mp4", 3, height=95, width=127)
    reader = video.open_video(str(path))
    assert (reader.width, reader.height) == (128, 96)  # H.264 4:2:0 needs even sizes: the edge repeated
    assert len(list(reader.frames())) == 3


def test_bad_sources_are_one_line_each(tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video at all")
    cases = {str(tmp_path / "missing.mp4"): "no such file",
             str(tmp_path / "notes.mp4"): "not a readable video",
             "camera:7": "no such camera", "camera:front": "a camera is camera:N"}
    for source, message in cases.items():
        with pytest.raises(video.VideoError, match=message) as error:
            video.open_video(source)
        assert "\n" not in str(error.value) and source in str(error.value)
    with pytest.raises(video.VideoError, match="write a video as one of"):
        video.VideoWriter(str(tmp_path / "out.gif"), fps=10, width=8, height=8)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(video.VideoError, match="cannot write the video"):
        video.VideoWriter(str(tmp_path / "a_file" / "out.mp4"), fps=10, width=8, height=8)
    assert video.is_video("a/b.MKV") and video.is_video("camera:0") and not video.is_video("photo.jpg")


def test_a_damaged_stretch_is_skipped_and_counted(tmp_path):
    path = write_video(tmp_path / "clip.avi", 30, height=96, width=128)  # MPEG-4 in AVI: every frame a packet
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    middle = slice(len(data) // 2, len(data) // 2 + 3000)
    data[middle] = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    (tmp_path / "damaged.avi").write_bytes(bytes(data))
    reader = video.open_video(str(tmp_path / "damaged.avi"))
    frames = list(reader.frames())
    assert 10 <= len(frames) <= 30 and frames[0].index == 0  # what decodes is kept
    # Truncated: a Matroska file keeps the frames before the cut; an AVI missing its tail is refused in one line.
    mkv = write_video(tmp_path / "clip.mkv", 30, height=96, width=128).read_bytes()
    (tmp_path / "cut.mkv").write_bytes(mkv[: len(mkv) // 2])
    kept = list(video.open_video(str(tmp_path / "cut.mkv")).frames())
    assert 1 <= len(kept) < 30 and [f.index for f in kept] == list(range(len(kept)))
    for frame in kept:  # each the frame it was, none garbled
        assert np.abs(frame.pixels.astype(int) - moving_square(frame.index)).mean() < 6
    (tmp_path / "cut.avi").write_bytes(bytes(path.read_bytes()[: len(data) // 2]))
    with pytest.raises(video.VideoError, match="cut.avi: not a readable video"):
        video.open_video(str(tmp_path / "cut.avi"))


def test_detect_stream_on_a_video_equals_detect_on_its_frames(tmp_path):
    import jax
    from random_models import spread_params

    config = configs.ssd_tiny(num_classes=4)
    params = jax.tree.map(np.asarray, spread_params(config))
    reader = video.open_video(str(write_video(tmp_path / "clip.mp4", 10, height=96, width=128)))
    frames = [f.pixels for f in reader.frames()]
    results = list(ssd_jax.detect_stream(params, frames, config=config, batch_size=4))
    assert len(results) == 10
    for pixels, result in zip(frames, results):
        alone = ssd_jax.detect(params, pixels[None], config=config)
        np.testing.assert_array_equal(result.num_detections, alone.num_detections)
        np.testing.assert_allclose(result.scores, alone.scores, atol=1e-5)


def test_detect_py_writes_the_annotated_video_and_one_json_line_per_frame(tmp_path):
    import json
    import subprocess
    import sys

    import jax
    from random_models import spread_params

    from ssd_jax import checkpoint

    config = configs.ssd_tiny(num_classes=4)
    params = jax.tree.map(np.asarray, spread_params(config))
    ckpt = checkpoint.save_params(tmp_path / "ckpt", params, config, metadata={"class_names": ["a", "b", "c"]})
    clip = write_video(tmp_path / "clip.mp4", 12, height=96, width=128)
    (tmp_path / "notes.mp4").write_text("not a video")
    script = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "detect.py")
    out_dir = tmp_path / "out"

    def run(*args):
        return subprocess.run([sys.executable, script, f"--checkpoint={ckpt}", f"--out_dir={out_dir}",
                               "--batch_size=4", "--min_score=0.2", *args], capture_output=True, text=True,
                              timeout=600)

    out = run(str(clip), str(tmp_path / "notes.mp4"), "camera:9", "--every_n=2")
    assert out.returncode == 1, out.stderr[-3000:]  # two sources could not be read at all
    assert "notes.mp4: not a readable video" in out.stderr and "camera:9: no such camera" in out.stderr
    assert "Traceback" not in out.stderr
    reader = video.open_video(str(out_dir / "clip.mp4"))
    assert (reader.width, reader.height, reader.fps) == (128, 96, pytest.approx(12.0))
    drawn = list(reader.frames())
    lines = [json.loads(line) for line in (out_dir / "clip.jsonl").read_text().splitlines()]
    assert len(drawn) == len(lines) == 12 and video.is_our_video(str(out_dir / "clip.mp4"))
    assert [line["frame"] for line in lines] == list(range(12))
    assert [line["detected"] for line in lines] == [i % 2 == 0 for i in range(12)]
    np.testing.assert_allclose([line["time"] for line in lines], np.arange(12) / 12.0, atol=1e-3)
    # Each detected frame's line holds detect's detections of that frame, decoded here on its own
    # (>= --min_score, in pixels, best first).
    decoded = [f.pixels for f in video.open_video(str(clip)).frames()]
    for index in range(0, 12, 2):
        alone = ssd_jax.detect(params, decoded[index][None], config=config)
        n = int(alone.num_detections[0])
        keep = np.asarray(alone.scores[0, :n]) >= 0.2
        found = lines[index]["detections"]
        assert len(found) == int(keep.sum()) > 0
        boxes = np.asarray(alone.boxes[0, :n])[keep] * [128, 96, 128, 96]
        np.testing.assert_allclose([d["bbox"] for d in found], np.concatenate(
            [boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1), atol=0.02)
        np.testing.assert_allclose([d["score"] for d in found], np.asarray(alone.scores[0, :n])[keep], atol=1e-4)
        assert [d["category_name"] for d in found] == [["a", "b", "c"][c - 1] for c in
                                                       np.asarray(alone.classes[0, :n])[keep]]
    assert lines[1]["detections"] == lines[0]["detections"]  # a frame between detections carries the last ones

    refused = run(str(clip))  # an earlier run's outputs: kept unless --overwrite
    assert refused.returncode != 0 and "--overwrite" in refused.stderr
    again = run(str(clip), "--overwrite", "--start=0.5", "--max_frames=4")
    assert again.returncode == 0, again.stderr[-3000:]
    lines = [json.loads(line) for line in (out_dir / "clip.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and lines[0]["time"] == pytest.approx(0.5, abs=1e-3)
    assert not [p for p in os.listdir(out_dir) if p.startswith(".")]  # no temporary file left


def test_ctrl_c_leaves_a_playable_video_and_a_valid_jsonl_of_the_frames_done(tmp_path):
    import glob
    import json
    import signal
    import subprocess
    import sys
    import time

    import jax
    from random_models import spread_params

    from ssd_jax import checkpoint

    config = configs.ssd_tiny(num_classes=4)
    ckpt = checkpoint.save_params(tmp_path / "ckpt", jax.tree.map(np.asarray, spread_params(config)), config)
    clip = write_video(tmp_path / "long.mp4", 600, height=64, width=64)
    script = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "detect.py")
    process = subprocess.Popen([sys.executable, script, f"--checkpoint={ckpt}", f"--out_dir={tmp_path / 'out'}",
                                "--batch_size=4", str(clip)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        partial = glob.glob(str(tmp_path / "out" / ".long.jsonl.*"))
        if partial and len(open(partial[0]).read().splitlines()) >= 20:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    lines = [json.loads(line) for line in (tmp_path / "out" / "long.jsonl").read_text().splitlines()]
    frames = list(video.open_video(str(tmp_path / "out" / "long.mp4")).frames())
    assert 20 <= len(lines) < 600 and [line["frame"] for line in lines] == list(range(len(lines)))
    assert len(frames) == len(lines)  # the video holds exactly the frames the JSONL lists


def test_the_video_benchmark_runs(tmp_path):
    import json
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_video.py")
    out = subprocess.run([sys.executable, script, "--model=ssd_tiny", "--frames=24", "--width=96", "--height=64",
                          "--batch=4", "--rounds=1", f"--out={tmp_path / 'bench.json'}"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads((tmp_path / "bench.json").read_text())["rows"][0]
    assert row["detect_py_fps"] > 0 and row["in_memory_fps"] > 0 and "| ratio |" in out.stdout
