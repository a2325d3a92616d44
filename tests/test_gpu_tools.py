"""The GPU tools, without a GPU: benchmarks/gpu_kernels.py reads kernel launches off compiled HLO
text (its counting, on a module written out by hand; the GPU compile itself needs jax's CUDA
plugin, which CI does not install), and every command of benchmarks/gpu_suite.sh takes its flags."""

import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_kernels  # noqa: E402

SUITE = os.path.join(ROOT, "benchmarks", "gpu_suite.sh")

# The entry: two kernels, a loop of 3 trips (condition: one kernel, body: two), then a switch whose
# branches launch one and two kernels. Non-kernel instructions (parameters, bitcasts, tuples) don't count.
HLO = """HloModule demo

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]{0}) parameter(0)
  ROOT %loop_compare_fusion = pred[] fusion(%p), kind=kLoop, calls=%c0
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]{0}) parameter(0)
  %loop_add_fusion = s32[] fusion(%p), kind=kLoop, calls=%c1
  %loop_multiply_fusion = f32[8]{0} fusion(%p), kind=kLoop, calls=%c2
  ROOT %tuple = (s32[], f32[8]{0}) tuple(%loop_add_fusion, %loop_multiply_fusion)
}

%branch_a (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  ROOT %wrapped_negate = f32[8]{0} fusion(%p), kind=kLoop, calls=%c3
}

%branch_b (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  %sort.1 = (f32[8]{0}, s32[8]{0}) sort(%p, %p), dimensions={0}, to_apply=%c4
  ROOT %loop_select_fusion = f32[8]{0} fusion(%sort.1), kind=kLoop, calls=%c5
}

ENTRY %main.1 (x: f32[4,8]) -> f32[8] {
  %x = f32[4,8]{1,0} parameter(0)
  %input_reduce_fusion = f32[8]{0} fusion(%x), kind=kInput, calls=%c6
  %bitcast = f32[2,4]{1,0} bitcast(%input_reduce_fusion)
  %loop_convert_fusion = s32[] fusion(%x), kind=kLoop, calls=%c7
  %while.1 = (s32[], f32[8]{0}) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %cond.2 = f32[8]{0} conditional(%loop_convert_fusion, %x, %x), branch_computations={%branch_a, %branch_b}
}
"""


def test_kernels_per_stage_count_loop_trips_and_one_branch():
    stages = gpu_kernels.stage_kernels(HLO)
    assert list(stages) == ["shallow", "deep"]  # named after the branches, in order
    launches = {stage: sum(n for _, _, n, _ in found) for stage, found in stages.items()}
    assert launches == {"shallow": 2 + 3 * (1 + 2) + 1, "deep": 2 + 3 * (1 + 2) + 2}
    written = {stage: sum(size for *_, size in found) for stage, found in stages.items()}
    # f32[8] + s32[] outside; per trip pred[] + s32[] + f32[8]; then f32[8] or (f32[8], s32[8]) + f32[8].
    outside = 8 * 4 + 4 + 3 * (1 + 4 + 8 * 4)
    assert written == {"shallow": outside + 8 * 4, "deep": outside + (8 * 4 + 8 * 4) + 8 * 4}


def test_output_bytes_of_tuples_and_dtypes():
    assert gpu_kernels.output_bytes("(f32[64,20]{1,0}, s32[64]{0})") == 64 * 20 * 4 + 64 * 4
    assert gpu_kernels.output_bytes("pred[3,5]{1,0}") == 15
    assert gpu_kernels.output_bytes("bf16[2,8]{1,0}") == 32
    assert gpu_kernels.output_bytes("s32[]") == 4


def test_every_gpu_suite_command_accepts_its_flags(tmp_path):
    # python3 is this environment's Python, as on the GPU machine where the suite runs.
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"
    out = subprocess.run(["bash", SUITE, "all", str(tmp_path)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "SUITE_CHECK": "1", "JAX_PLATFORMS": "cpu", "PATH": path},
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    exits = dict(re.findall(r"^=== (\w+): exit (\d+) after", out.stdout, flags=re.M))
    assert len(exits) == 13, out.stdout[-3000:]  # every step of every part ran, none skipped
    failed = {name: code for name, code in exits.items() if code != "0"}
    assert not failed, (failed, out.stdout[-3000:])
    # The NMS tests part selects tests (pytest --collect-only exits 5 when -k matches none).
    assert re.search(r"^(\d+)/\d+ tests collected", open(tmp_path / "tests.log").read(), flags=re.M)
