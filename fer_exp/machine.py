"""The machine a run trains on: its CPU, and the precision and kernels that are fastest there.

Imports no TensorFlow: `use_onednn` has to run before TensorFlow loads.
"""

from __future__ import annotations

import os
import platform
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


@lru_cache(maxsize=1)
def cpu() -> tuple[str, tuple[str, ...]]:
    """(CPU model name, the FLAGS it has)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    lines = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    lines = {k.strip(): v.strip() for k, v in lines.items()}
    flags = set(lines.get("flags", "").split())
    return lines.get("model name", platform.processor() or platform.machine()), tuple(f for f in FLAGS if f in flags)


def has_bf16() -> bool:
    return any(f in BF16_FLAGS for f in cpu()[1])


def precision(requested: str) -> str:
    """precision=auto: mixed_bfloat16 where the CPU computes bfloat16 natively (AVX512_BF16 or AMX),
    float32 elsewhere (emulated bfloat16 is several times slower than float32)."""
    if requested != "auto":
        return requested
    return "mixed_bfloat16" if has_bf16() else "float32"


def use_onednn(model_name: str) -> None:
    """Before TensorFlow loads: turn oneDNN on where TensorFlow would leave it off, except for the
    models measured slower with it.

    A value the user set in the environment wins. TensorFlow reads it once per process, so in a sweep
    run in one process (the basic launcher) the first job's model decides for all jobs.
    """
    if model_name not in ONEDNN_SLOWER and not onednn_default():
        os.environ.setdefault(ONEDNN_ENV, "1")


def onednn_default() -> bool:
    return any(f in ONEDNN_DEFAULT_FLAGS for f in cpu()[1])


def onednn_on() -> bool:
    """Whether TensorFlow runs oneDNN kernels in this process (the environment, else TensorFlow's default)."""
    value = os.environ.get(ONEDNN_ENV)
    return onednn_default() if value is None else value.lower() in ("1", "true", "on")


def describe(requested_precision: str) -> dict[str, str]:
    """What a run records about its machine: CPU, flags, precision chosen, oneDNN."""
    name, flags = cpu()
    return {
        "cpu": name,
        "cpu_flags": " ".join(flags) or "none of " + " ".join(FLAGS),
        "cores": str(os.cpu_count()),
        "precision": precision(requested_precision),
        "onednn": "on" if onednn_on() else "off",
    }
