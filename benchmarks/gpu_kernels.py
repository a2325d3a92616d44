"""The kernels that detect's post-processing launches on a GPU, read off XLA:GPU's compiled program
on a machine without one.

  pip install 'jax[cuda13]==<the installed jax version>'    # XLA:GPU's compiler; no GPU or driver needed
  python benchmarks/gpu_kernels.py --cases=ssd300:64,ssd300_torchvision:32 [--list=deep]

Compiles ``detect.postprocess`` (softmax, decode, the staged NMS) for the GPU that ``--target``
describes (XLA's GpuTargetConfigProto in text format; benchmarks/gpu_targets/ has an H200 and an
H100) and counts, for each NMS stage, the kernels one call launches (a loop's kernels times its
trip count) and the megabytes they write. At a millisecond or two per call, each kernel costs a
few microseconds however little it does, and every intermediate written goes through HBM and
back: the two counts show where post-processing time goes before anyone can time it, and where
XLA did something unexpected (``--list`` names the kernels and their outputs). Nothing is timed:
the times come from bench_detect.py and bench_postprocess.py on a GPU. Prints markdown, writes JSON.
"""

from __future__ import annotations

import os
import re

import benchlib
import jax
import jax.numpy as jnp
from absl import app, flags, logging
from jax.experimental import topologies
from jax.sharding import SingleDeviceSharding

from ssd_jax import configs
from ssd_jax.detect import postprocess

CASES = flags.DEFINE_list("cases", ["ssd300:64", "ssd300_torchvision:32"], "model:batch pairs.")
TARGET = flags.DEFINE_string("target", os.path.join(os.path.dirname(__file__), "gpu_targets", "h200.txtpb"),
                             "XLA GpuTargetConfigProto (text format) of the GPU to compile for.")
LIST = flags.DEFINE_string("list", "", "Also list the kernels of this stage (shallow, deep or exhaustive).")
DUMP = flags.DEFINE_string("dump", "", "Folder to write each case's compiled HLO text to.")
OUT = flags.DEFINE_string("out", "benchmarks/results/gpu_kernels.json", "JSON to write.")

STAGES = ("shallow", "deep", "exhaustive")
# Instructions that run as kernels of their own after XLA:GPU's fusion passes.
_KERNEL = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) (fusion|sort|custom-call|copy|transpose|reduce|gather|"
                     r"scatter|pad|concatenate|dynamic-update-slice)\(", re.M)
_WHILE = re.compile(r"while\(.*?condition=%([\w.\-]+), body=%([\w.\-]+).*?\"known_trip_count\":\{\"n\":\"(\d+)\"")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f64": 8, "s64": 8, "u64": 8}


def gpu_device(target_path: str):
    """A compile-only device of the GPU that the target config describes."""
    with open(target_path) as f:
        target = f.read()
    try:
        topology = topologies.get_topology_desc("", "cuda", target_config=target, topology="1x1x1")
    except (NotImplementedError, RuntimeError) as e:
        raise SystemExit(f"error: no XLA:GPU compiler here ({e}); install jax's CUDA plugin, "
                         f"e.g. pip install 'jax[cuda13]=={jax.__version__}' (no GPU needed)") from e
    return topology.devices[0]


def compiled_postprocess(config, batch: int, device) -> str:
    """HLO text of ``postprocess`` compiled for ``device``, from bfloat16 head outputs [B, P, 4 / C]."""
    sharding = SingleDeviceSharding(device)
    num_priors = config.num_priors
    locations = jax.ShapeDtypeStruct((batch, num_priors, 4), jnp.bfloat16, sharding=sharding)
    logits = jax.ShapeDtypeStruct((batch, num_priors, config.num_classes), jnp.bfloat16, sharding=sharding)
    # The library picks its GPU formulations (e.g. nms.top_candidates' narrowing) by the default
    # backend, which is this process's CPU: it is told "gpu" while the program is traced.
    default_backend = jax.default_backend
    jax.default_backend = lambda: "gpu"
    try:
        lowered = jax.jit(lambda loc, cls: postprocess(loc, cls, config, with_stage=True)).lower(locations, logits)
    finally:
        jax.default_backend = default_backend
    return lowered.compile().as_text()


def split_computations(hlo: str) -> tuple[dict[str, str], str]:
    """HLO module text -> ({computation name: its text}, the entry computation's name)."""
    computations, entry = {}, ""
    for block in re.split(r"\n(?=\S)", hlo):
        head = block.split("\n", 1)[0]
        if head.startswith("ENTRY"):
            entry = head.split()[1].lstrip("%")
            computations[entry] = block
        elif head.startswith("%"):
            computations[head.split()[0].lstrip("%")] = block
    return computations, entry


def output_bytes(shapes: str) -> int:
    """Bytes of an instruction's result, e.g. 'f32[64,20]{1,0}' or a tuple of such."""
    total = 0
    for dtype, dims in re.findall(r"([a-z]+\d*)\[([\d,]*)\]", shapes):
        count = 1
        for dim in filter(None, dims.split(",")):
            count *= int(dim)
        total += count * _BYTES.get(dtype, 4)
    return total


def kernels(computations: dict[str, str], name: str) -> list[tuple[str, str, int, int]]:
    """(kernel, result shape, launches, bytes written) of each kernel in one run of computation
    ``name``; a loop's kernels launch once per trip (conditionals are left to the caller)."""
    text = computations[name]
    found = [(kernel, shapes[:100], 1, output_bytes(shapes)) for kernel, shapes, _ in _KERNEL.findall(text)]
    for condition, body, trips in _WHILE.findall(text):
        for kernel, shapes, launches, size in kernels(computations, condition) + kernels(computations, body):
            found.append((f"{kernel} (loop)", shapes, launches * int(trips), size * int(trips)))
    return found


def stage_kernels(hlo: str) -> dict[str, list[tuple[str, str, int, int]]]:
    """{stage: the kernels of a call that runs that stage}: the entry's own, then the stage's branch."""
    computations, entry = split_computations(hlo)
    common = kernels(computations, entry)
    branches = re.search(r"conditional\(.*?branch_computations=\{([^}]*)\}", computations[entry])
    if branches is None:  # one stage only (the shallow stage would already be the exhaustive one)
        return {"exhaustive": common}
    names = [name.strip().lstrip("%") for name in branches.group(1).split(",")]
    return {stage: common + kernels(computations, name) for stage, name in zip(STAGES, names)}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if not jax.config.jax_platforms:  # the compiler needs no GPU: do not look for one
        jax.config.update("jax_platforms", "cpu")
    device = gpu_device(TARGET.value)
    rows, listings = [], {}
    for case in CASES.value:
        model, _, batch = case.partition(":")
        if not batch.isdigit():
            raise app.UsageError(f"--cases takes model:batch pairs, e.g. ssd300:64; got {case!r}")
        hlo = compiled_postprocess(configs.get(model), int(batch), device)
        if DUMP.value:
            os.makedirs(DUMP.value, exist_ok=True)
            with open(os.path.join(DUMP.value, f"postprocess_{model}_b{batch}.txt"), "w") as f:
                f.write(hlo)
        for stage, found in stage_kernels(hlo).items():
            rows.append({"model": model, "batch": int(batch), "stage": stage,
                         "kernels": sum(launches for _, _, launches, _ in found),
                         "mb_written": sum(size for *_, size in found) / 1e6,
                         "largest": max(found, key=lambda k: k[3])[1] if found else ""})
            if stage == LIST.value:
                listings[f"{model} b{batch}, {stage} stage"] = [
                    {"kernel": kernel, "result": shapes, "launches": launches, "mb": size / 1e6}
                    for kernel, shapes, launches, size in found]
    with open(TARGET.value) as f:
        target_name = re.search(r'device_description_str: "([^"]*)"', f.read())
    print(f"\ndetect's post-processing compiled for {target_name.group(1) if target_name else TARGET.value} "
          f"(not run), jax {jax.__version__}\n")
    print(benchlib.markdown_table(rows, [("model", "model"), ("batch", "batch"), ("stage", "stage"),
                                         ("kernels", "kernels per call"), ("mb_written", "MB written"),
                                         ("largest", "largest result")]))
    for name, listing in listings.items():
        print(f"\n{name}:\n")
        print(benchlib.markdown_table(listing, [("kernel", "kernel"), ("result", "result"),
                                                      ("launches", "launches"), ("mb", "MB")]))
    benchlib.write_json(OUT.value, {"benchmark": "gpu_kernels", "target": TARGET.value, "rows": rows,
                                    "listings": listings})


if __name__ == "__main__":
    app.run(main)
