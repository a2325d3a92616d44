"""experiments/convert_weights.py end to end, in a subprocess as a user runs it."""

import os
import subprocess
import sys

import jax
import numpy as np
from test_weights import torchvision_state_dict

from ssd_jax import checkpoint, weights

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "convert_weights.py")


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300)


def test_converts_torchvision_npz_to_a_loadable_checkpoint(tmp_path):
    state = torchvision_state_dict(seed=3)
    source = tmp_path / "tv.npz"
    np.savez(source, **state)
    out = run("--format=torchvision", f"--input={source}", f"--output={tmp_path / 'ckpt'}")
    assert out.returncode == 0, out.stderr
    assert "35,641,826 parameters" in out.stdout
    params, config = checkpoint.load_params(tmp_path / "ckpt")
    assert config.name == "ssd300_torchvision" and config.num_classes == 91
    expected = weights.from_torchvision(state)
    assert jax.tree.all(jax.tree.map(np.array_equal, params, expected))


def test_wrong_format_fails_with_a_named_key(tmp_path):
    source = tmp_path / "tv.npz"
    np.savez(source, **torchvision_state_dict())
    out = run("--format=amdegroot", f"--input={source}", f"--output={tmp_path / 'ckpt'}")
    assert out.returncode != 0
    assert "missing key conf.0.weight" in out.stderr
    assert not (tmp_path / "ckpt").exists()


def test_missing_input_file_is_reported(tmp_path):
    out = run("--format=torchvision", f"--input={tmp_path / 'absent.pth'}", f"--output={tmp_path / 'ckpt'}")
    assert out.returncode != 0 and "weight file not found" in out.stderr
