#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md, in one go (within 8 minutes by default):
#   bash benchmarks/gpu_suite.sh [parts] [out_dir]
#
#   parts: comma-separated, default "detect,train,tests,post" (the GPU-speed issue's figures);
#   more: nms, backbones, diagnose, layers; "all" runs every part.
#     detect    detect images/s and the decode+NMS share: SSD300 with 21 and 91 classes, batch 32 to
#               128, bfloat16; float32 at batch 32 to 128 (detect's default slices of 32)
#     train     the SSD300 train step, bfloat16, batch 32, with the default gradient rules on a
#               GPU (fast_pool): all layers trained or the paper's frozen conv1-conv2, with a
#               profile by XLA op (add xla to --gradients for XLA's own pooling gradient)
#     tests     the NMS tests (kept sets against the exhaustive procedure and torchvision)
#     post      the post-processing's variants (shallow depth, top-k narrowing) and its XLA ops
#     nms       batched_nms against torchvision's on the same GPU, 21 and 91 classes
#     backbones SSDLite320 (MobileNetV3-Large) and SSD300 on ResNet-50: detect at batch 64 and the
#               train step at batch 32, bfloat16; SSDLite against torchvision's on the same GPU
#     diagnose  the float32 network at batch 64: whole (the slowdown that detect's slices avoid),
#               without XLA's cuDNN conv+bias+ReLU fusion, and with XLA's autotuning off
#     layers    each convolution alone at batch 32 and 64, with its cuDNN algorithm
# A part that would start after SUITE_BUDGET seconds (default 420) is skipped and named at the end,
# so that the suite ends within 8 minutes whatever the machine's compile times.
# Each part's table goes to stdout and its JSON and log to out_dir (default benchmarks/results).
# SUITE_CHECK=1 runs nothing: each command only checks its flags (--only_check_args; pytest
# --collect-only), on any machine, so that a lent GPU's minutes are not lost to a stale flag.
# Needs a CUDA build of jax (and of torch for "tests", "nms" and "backbones") and the project's
# dependencies (pip install -e '.[dev,torch]') in the current Python environment.
# Without a GPU, benchmarks/gpu_kernels.py shows the kernels the post-processing compiles to.
set -u -o pipefail
parts=${1:-detect,train,tests,post}
[[ $parts == all ]] && parts=detect,train,tests,post,nms,backbones,diagnose,layers
out=${2:-benchmarks/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
suite_start=$SECONDS
budget=${SUITE_BUDGET:-420}
skipped=""

step() {  # step NAME COMMAND...: runs one benchmark, its output to the screen and to out/NAME.log
  local name=$1; shift
  if (( SECONDS - suite_start > budget )); then
    echo "=== $name: skipped, the suite is past its ${budget} s"; skipped="$skipped $name"; return
  fi
  if [[ -n ${SUITE_CHECK:-} ]]; then
    case " $* " in *" pytest "*) set -- "$@" --collect-only;; *) set -- "$@" --only_check_args;; esac
  fi
  echo "=== $name: $*"
  local start=$SECONDS
  "$@" 2>&1 | grep -v "^I0000\|^W0000" | tee "$out/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s (suite at $((SECONDS - suite_start)) s)"
}
has() { [[ ",$parts," == *",$1,"* ]]; }

[[ -n ${SUITE_CHECK:-} ]] || nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import jax, jaxlib, flax, optax; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"

if has detect; then
  step detect_bf16 python3 benchmarks/bench_detect.py --models=ssd300,ssd300_torchvision --batches=32,64,128 \
    --dtypes=bfloat16 --repeats=5 --out="$out/bench_detect_bf16.json"
  step detect_f32 python3 benchmarks/bench_detect.py --models=ssd300 --batches=32,64,128 --dtypes=float32 \
    --repeats=3 --out="$out/bench_detect_f32.json"
fi

if has train; then
  step train python3 benchmarks/bench_train.py --models=ssd300 --batches=32 --dtypes=bfloat16 --steps=10 \
    --frozen_blocks=0,2 --gradients=fast_pool --profile --out="$out/bench_train.json"
fi

if has tests || has nms || has backbones; then
  export XLA_PYTHON_CLIENT_PREALLOCATE=false  # torch and JAX share the GPU
fi
if has tests; then
  # float32 at full precision: TF32 rounding would move boxes across the IoU threshold.
  step tests env JAX_DEFAULT_MATMUL_PRECISION=highest python3 -m pytest -q -p no:cacheprovider \
    tests/test_nms.py tests/test_torchvision_parity.py \
    -k "stage or narrowed or blocks or keeps_what_torchvision"
fi

if has post; then
  step post python3 benchmarks/bench_postprocess.py --cases=ssd300:64,ssd300_torchvision:32 \
    --depths=32,64 --narrow=auto,off --profile --out="$out/bench_postprocess.json"
fi

if has nms; then
  step nms python3 benchmarks/bench_nms.py --batch=32 --classes=21,91 --scenarios=dense,objects --repeats=3 \
    --out="$out/bench_nms.json"
fi

if has backbones; then
  step backbones_detect python3 benchmarks/bench_detect.py --models=ssdlite320_mobilenet_v3_large,ssd300_resnet50 \
    --batches=64 --dtypes=bfloat16 --repeats=3 --out="$out/bench_detect_backbones.json"
  step backbones_train python3 benchmarks/bench_train.py --models=ssdlite320_mobilenet_v3_large,ssd300_resnet50 \
    --batches=32 --dtypes=bfloat16 --steps=5 --batch_norm --out="$out/bench_train_backbones.json"
  step backbones_torchvision python3 benchmarks/compare_torchvision.py --model=ssdlite320_mobilenet_v3_large \
    --batch=64 --train_batch=32 --dtype=bfloat16 --repeats=3 --out="$out/compare_ssdlite.json"
fi

if has layers; then
  step layers python3 benchmarks/diagnose_float32.py --parts=layers --batches=32,64 --out="$out/diagnose_layers.json"
fi
if has diagnose; then
  for flag in "" --xla_disable_hlo_passes=cudnn-fused-convolution-rewriter --xla_gpu_autotune_level=0; do
    name=diagnose_${flag#--xla_}; name=${name%%=*}; name=${name%_}
    step "${name:-diagnose}" env XLA_FLAGS="$flag" python3 benchmarks/diagnose_float32.py --parts=network \
      --batches=64 --repeats=3 --out="$out/${name:-diagnose}.json"
  done
fi
echo "=== suite: $((SECONDS - suite_start)) s${skipped:+; skipped (over ${budget} s):$skipped}"
