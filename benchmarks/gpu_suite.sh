#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md, in one go: bash benchmarks/gpu_suite.sh [part] [out_dir]
#
#   part: "throughput" (detect and train-step images/s, float32 and bfloat16), "compare" (against
#   torchvision on the same GPU, NMS, and the float32-safe tests on the GPU), or "all" (default).
# Each benchmark's table goes to stdout and its JSON and log to out_dir (default benchmarks/results).
# Needs a CUDA build of jax (and of torch for "compare") in the current Python environment.
set -u -o pipefail
part=${1:-all}
out=${2:-benchmarks/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME COMMAND...: runs one benchmark, its output to the screen and to out/NAME.log
  local name=$1; shift
  echo "=== $name: $*"
  local start=$SECONDS
  "$@" 2>&1 | grep -v "^I0000\|^W0000" | tee "$out/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"

if [[ $part == all || $part == throughput ]]; then
  step detect300 python3 benchmarks/bench_detect.py --models=ssd300 --batches=1,8,32,64 \
    --dtypes=float32,bfloat16 --out="$out/bench_detect_ssd300.json"
  step detect512 python3 benchmarks/bench_detect.py --models=ssd512 --batches=8,32 \
    --dtypes=float32,bfloat16 --out="$out/bench_detect_ssd512.json"
  step train300 python3 benchmarks/bench_train.py --models=ssd300 --batches=8,32 --steps=10 \
    --dtypes=float32,bfloat16 --out="$out/bench_train_ssd300.json"
  step train_tiny python3 benchmarks/bench_train.py --models=ssd_tiny --batches=32,256 --steps=20 \
    --dtypes=float32,bfloat16 --out="$out/bench_train_tiny.json"
fi

if [[ $part == all || $part == compare ]]; then
  export XLA_PYTHON_CLIENT_PREALLOCATE=false  # torch and JAX share the GPU in the comparisons
  step compare_f32 python3 benchmarks/compare_torchvision.py --batch=32 --train_batch=32 --repeats=10 \
    --out="$out/compare_torchvision_f32.json"
  step compare_bf16 python3 benchmarks/compare_torchvision.py --batch=32 --train_batch=32 --repeats=10 \
    --dtype=bfloat16 --out="$out/compare_torchvision_bf16.json"
  step nms python3 benchmarks/bench_nms.py --batch=32 --out="$out/bench_nms.json"
  # Tests that need neither TensorFlow nor CPU-only code, at float32 matmul precision (a GPU's
  # default float32 convolution rounds its inputs to TF32, outside the parity tolerances).
  JAX_DEFAULT_MATMUL_PRECISION=highest step tests python3 -m pytest -q -p no:cacheprovider \
    tests/test_boxes.py tests/test_matching.py tests/test_losses.py tests/test_nms.py \
    tests/test_torchvision_parity.py
fi
