"""The machine a run trains on: its CPU and GPUs, and the precision and kernels that are fastest there.

Imports TensorFlow only to list GPUs where NVIDIA's driver is loaded (`gpus`, called by `precision` and
`describe`): `use_onednn` and `use_threads` have to run before TensorFlow loads.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

# The CPU flags that decide precision and kernels (Linux /proc/cpuinfo names).
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# TensorFlow turns oneDNN on by itself only on CPUs with one of these (its docs: "neural-network-focused
# hardware features such as AVX512_VNNI, AVX512_BF16, and AMX").
ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
# Where TensorFlow leaves oneDNN off (AVX2-only CPUs), oneDNN was measured faster for shallow, deep and
# the VGG recipes and slower for EfficientNetB2: `make bench ARGS="--sections kernels"` measures it
# (benchmarks/README.md). XLA (jit_compile) was slower for every model, so Keras's default (off) stays.
ONEDNN_SLOWER = {"efficientnet_b2"}
# TensorFlow's thread-pool sizes, read once when it loads (the config's `threads`)
THREADS_ENV = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
# GPUs from Volta (compute capability 7.0) on have tensor cores for float16: mixed_float16 there
# (TensorFlow's mixed-precision guide); older GPUs train in float32.
FLOAT16_CAPABILITY = (7, 0)
# Where Linux's NVIDIA driver shows itself once loaded; TensorFlow's CUDA build needs it for any GPU
NVIDIA_DRIVER = Path("/proc/driver/nvidia")
# `make bench` writes its figures here, one file per CPU model and flags (bench_file)
BENCH_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@lru_cache(maxsize=1)
def cpu() -> tuple[str, tuple[str, ...]]:
    """(CPU model name, the FLAGS it has)."""
    from fer_exp.tracking.provenance import cpu_info  # here: the tracking package loads MLflow, --help needs none

    name, flags = cpu_info()
    return name, tuple(f for f in FLAGS if f in flags)


def has_bf16() -> bool:
    return any(f in BF16_FLAGS for f in cpu()[1])


def gpus() -> list[tuple[str, tuple[int, int] | None]]:
    """(name, compute capability) of each GPU TensorFlow sees; [] on a CPU-only machine or build.
    Without NVIDIA's driver (NVIDIA_DRIVER) TensorFlow sees none: it is not loaded to ask."""
    if not NVIDIA_DRIVER.exists():
        return []
    import tensorflow as tf

    found = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        found.append((details.get("device_name", device.name), details.get("compute_capability")))
    return found


def precision(requested: str, devices: list | None = None) -> str:
    """precision=auto: on a GPU (`devices`, default `gpus()`) mixed_float16 from compute capability 7.0
    on, else float32; on a CPU mixed_bfloat16 where it computes bfloat16 natively (AVX512_BF16 or AMX),
    float32 elsewhere (emulated bfloat16 is several times slower than float32)."""
    if requested != "auto":
        return requested
    devices = gpus() if devices is None else devices
    if devices:
        capability = devices[0][1]
        return "mixed_float16" if capability and tuple(capability) >= FLOAT16_CAPABILITY else "float32"
    return "mixed_bfloat16" if has_bf16() else "float32"


def use_onednn(model_name: str) -> None:
    """Before TensorFlow loads: turn oneDNN on where TensorFlow would leave it off, except for the
    models measured slower with it.

    A value the user set in the environment wins. TensorFlow reads it once per process, so in a sweep
    run in one process (the basic launcher) the first job's model decides for all jobs.
    """
    if model_name not in ONEDNN_SLOWER and not onednn_default():
        os.environ.setdefault(ONEDNN_ENV, "1")


def use_threads(threads: int | None) -> None:
    """Before TensorFlow loads: size its intra- and inter-op thread pools (None: TensorFlow's default,
    one thread per core). A value the user set in the environment wins."""
    if threads:
        for name in THREADS_ENV:
            os.environ.setdefault(name, str(threads))


def onednn_env(recorded: str | None) -> dict[str, str]:
    """The environment that sets oneDNN as a run recorded it (tag value "on"/"off"; None: nothing set)."""
    return {ONEDNN_ENV: "1" if recorded == "on" else "0"} if recorded else {}


def onednn_default() -> bool:
    return any(f in ONEDNN_DEFAULT_FLAGS for f in cpu()[1])


def onednn_on() -> bool:
    """Whether TensorFlow runs oneDNN kernels in this process (the environment, else TensorFlow's default)."""
    value = os.environ.get(ONEDNN_ENV)
    return onednn_default() if value is None else value.lower() in ("1", "true", "on")


def describe(requested_precision: str, devices: list | None = None) -> dict[str, str]:
    """What a run records about its machine: CPU, flags, GPUs (`devices`, default `gpus()`), precision
    chosen, oneDNN."""
    name, flags = cpu()
    devices = gpus() if devices is None else devices
    return {
        "cpu": name,
        "cpu_flags": " ".join(flags) or "none of " + " ".join(FLAGS),
        "cores": str(os.cpu_count()),
        "gpu": "; ".join(f"{n} (compute capability {'.'.join(map(str, c or ('?',)))})" for n, c in devices) or "none",
        "precision": precision(requested_precision, devices),
        "onednn": "on" if onednn_on() else "off",
    }


def bench_file() -> Path:
    """This CPU's benchmark results: benchmarks/results/<model>_<flags>.json, e.g. amd-epyc_avx2-fma.json
    (one model name covers CPUs of different generations; the flags tell them apart)."""
    name, flags = cpu()
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cpu"
    return BENCH_RESULTS / f"{slug}_{'-'.join(flags) or 'none'}.json"


def peak_gflops(chosen_precision: str) -> float | None:
    """The peak GFLOP/s `make bench` measured on this CPU in the precision a run trains in (float32 or
    mixed_bfloat16); None where it never ran (or on a GPU: the bench measures CPUs)."""
    dtype = {"float32": "float32", "mixed_bfloat16": "bfloat16"}.get(chosen_precision)
    path = bench_file()
    if dtype is None or not path.is_file():
        return None
    rows = json.loads(path.read_text()).get("peak", {})
    rates = [r["value"] for name, r in rows.items() if name.startswith(f"{dtype} ")]
    return max(rates) if rates else None
