"""The README's Python snippets run as printed, in a fresh process, after a bare ``import ssd_jax``; and
its test command runs every test under CI."""

import os
import re
import subprocess
import sys
import textwrap

import jax

import ssd_jax
from ssd_jax import checkpoint, configs

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def python_snippets() -> list[str]:
    with open(README) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_readme_python_snippets_run_in_a_fresh_process(tmp_path):
    snippets = python_snippets()
    assert len(snippets) >= 2
    # The files the README's commands would have written: a converted torchvision COCO model.
    config = configs.ssd300_torchvision()
    checkpoint.save_params(tmp_path / "ckpt" / "tv_coco", ssd_jax.init(jax.random.key(0), config), config)
    # The snippets in order, as one session; each must leave no error.
    program = "\n\n".join(snippets) + "\nprint('README snippets ok')\n"
    out = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True,
                         timeout=900, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "README snippets ok" in out.stdout


def test_import_ssd_jax_loads_submodules_lazily_and_never_tensorflow_or_pyav():
    program = textwrap.dedent("""
        import sys
        import ssd_jax
        assert "tensorflow" not in sys.modules, "import ssd_jax imported TensorFlow"
        for name in ("checkpoint", "weights", "evaluation", "visualize", "workdir"):
            getattr(ssd_jax, name)
        assert "av" not in sys.modules, "image detection imported PyAV (only a video may)"
        assert callable(ssd_jax.detect_stream) and callable(ssd_jax.video.open_video)
        assert callable(ssd_jax.checkpoint.load_params) and callable(ssd_jax.weights.from_torchvision)
        assert "tensorflow" not in sys.modules, "a detection-side submodule imported TensorFlow"
        assert callable(ssd_jax.train.train_and_evaluate) and issubclass(ssd_jax.data.DatasetNotPreparedError,
                                                                          FileNotFoundError)
        try:
            ssd_jax.no_such_module
        except AttributeError as error:
            assert "no_such_module" in str(error)
        else:
            raise AssertionError("unknown attribute did not raise")
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


def test_under_ci_a_skipped_test_fails(tmp_path):
    """.ci/run sets SSD_JAX_NO_SKIPS: a test whose reference cannot be had (a download, a library)
    must fail there, not pass unexercised."""
    (tmp_path / "test_one.py").write_text("import pytest\n\ndef test_needs_a_download():\n"
                                          "    pytest.skip('the reference could not be fetched')\n")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no_skips", "-p", "no:cacheprovider", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    env.pop("SSD_JAX_NO_SKIPS", None)
    quiet = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert quiet.returncode == 0 and "1 skipped" in quiet.stdout, quiet.stdout[-2000:]
    strict = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                            env={**env, "SSD_JAX_NO_SKIPS": "1"}, timeout=120)
    assert strict.returncode == 1 and "1 failed" in strict.stdout, strict.stdout[-2000:]
    assert "SSD_JAX_NO_SKIPS is set" in strict.stdout and "could not be fetched" in strict.stdout
    ci = open(os.path.join(os.path.dirname(__file__), os.pardir, ".ci", "run")).read()
    assert "SSD_JAX_NO_SKIPS=1 .venv/bin/python -m pytest" in ci
