"""The default sections' speed figures: decoding the data, the input pipeline, the machine's peak
FLOP/s, and training steps per model config (images/s, FLOPs, MFU)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from common import MODEL_CONFIGS, config, pipeline_rate, row, step_time

from fer_exp.data import Split, build_augmenter, load_folder_split, make_dataset
from fer_exp.models import training_flops
from fer_exp.training import compile_model, machine

# --- data ---------------------------------------------------------------------


def drop_page_cache(root: Path) -> None:
    """Ask the kernel to forget the files' cached pages, so the next read comes from disk."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def bench_data(results: dict, root: Path, classes: list[str]) -> dict[str, Split]:
    drop_page_cache(root)
    with tempfile.TemporaryDirectory() as cache:
        times = {}
        for label in ("cold", "cached"):
            start = time.perf_counter()
            splits = {s: load_folder_split(root, s, classes, 48, cache_dir=cache) for s in ("train", "validation")}
            times[label] = time.perf_counter() - start
    n = sum(len(s) for s in splits.values())
    row(results, "data", "images", n)
    row(results, "data", "cold decode", n / times["cold"], "images/s", f"{times['cold']:.1f} s")
    row(results, "data", "cached load", times["cached"], "s")
    row(results, "data", "cold decode / cached load", times["cold"] / times["cached"], "x")
    return splits


# --- input pipeline -----------------------------------------------------------


def bench_pipeline(results: dict, train: Split, batches: int) -> None:
    for name in ("none", "notebook", "strong"):
        aug = build_augmenter(**config(f"augment={name}")["augment"], seed=0)
        ds = make_dataset(train.images, train.labels, 7, 64, aug, training=True, seed=0)
        row(results, "pipeline", f"tf.data, augment={name}, batch 64", pipeline_rate(ds, batches), "images/s")


# --- peak and training -----------------------------------------------------------


def flop_rate(fn, flops: float, seconds: float = 3.0) -> float:
    """FLOP/s of calling fn (which does `flops` operations) repeatedly for about `seconds`, after one warm-up call."""
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return flops * n / (time.perf_counter() - start)


def bench_peak(results: dict) -> dict[str, float]:
    """{dtype: the best FLOP/s measured}: a large matmul and a convolution at the recipe's shapes.
    Runs log their MFU against it (fer_exp.training.machine.peak_gflops reads it back)."""
    peak = {}
    for dtype in ("float32", "bfloat16"):
        a = tf.random.normal((2048, 2048), dtype=tf.float32, seed=0)
        x, k = tf.random.normal((128, 24, 24, 64), seed=0), tf.random.normal((3, 3, 64, 64), seed=0)
        a, x, k = (tf.cast(t, dtype) for t in (a, x, k))
        # measured within this iteration, so the closures see this dtype's tensors
        matmul = tf.function(lambda: tf.linalg.matmul(a, a))  # noqa: B023
        conv = tf.function(lambda: tf.nn.conv2d(x, k, 1, "SAME"))  # noqa: B023
        rates = {
            "matmul 2048^3": flop_rate(matmul, 2 * 2048**3),
            "conv 3x3 64->64, 24x24, batch 128": flop_rate(conv, 2 * 128 * 24 * 24 * 64 * 64 * 9),
        }
        for what, rate in rates.items():
            row(results, "peak", f"{dtype} {what}", rate / 1e9, "GFLOP/s")
        peak[dtype] = max(rates.values())
    return peak


def bench_training(
    results: dict,
    train: Split,
    names: list[str],
    budget: float,
    peak: dict[str, float],
    configs: dict[str, list[str]] = MODEL_CONFIGS,
    section: str = "training",
) -> None:
    """Per model config: training steps fed from in-memory tensors vs from the input pipeline, FLOPs and MFU.

    In-memory: 16 distinct batches, augmented once beforehand, cycled (same shapes as the
    pipeline's). The two are timed alternately, twice each, so that drift hits both alike.
    """
    for name in names:
        c = config(*configs[name])
        if c["deterministic"]:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(c["seed"])
        bs, per_epoch = c["batch_size"], -(-len(train) // c["batch_size"])
        model = compile_model(c, 7, per_epoch)
        aug = build_augmenter(**c["augment"], seed=c["seed"])
        fed = make_dataset(train.images, train.labels, 7, bs, aug, training=True, seed=c["seed"])
        pool = [(x.numpy(), y.numpy()) for x, y in fed.take(16)]
        in_memory = (
            tf.data.Dataset.from_tensor_slices(tuple(np.concatenate(part) for part in zip(*pool))).repeat().batch(bs)
        )
        wall, cpu, steps = {"mem": [], "fed": []}, {"mem": [], "fed": []}, None
        for _ in range(2):
            for mode, ds in (("mem", in_memory), ("fed", fed)):
                seconds, cpu_seconds, steps = step_time(model, ds, budget / 2, steps)
                wall[mode].append(seconds)
                cpu[mode].append(cpu_seconds)
        t_mem, t_fed = np.mean(wall["mem"]), np.mean(wall["fed"])
        spread = " / ".join(f"{m / f:.3f}" for m, f in zip(wall["mem"], wall["fed"]))
        row(results, section, f"{name} (batch {bs}): in-memory tensors", bs / t_mem, "images/s", f"2 x {steps} steps")
        row(
            results,
            section,
            f"{name} (batch {bs}): fed by the pipeline",
            bs / t_fed,
            "images/s",
            f"2 x {steps} steps",
        )
        row(
            results,
            section,
            f"{name}: pipeline / in-memory",
            t_mem / t_fed,
            "ratio",
            f"target >= 0.95; the 2 pairs: {spread}",
        )
        row(
            results,
            section,
            f"{name}: CPU time per step, in-memory / pipeline",
            np.mean(cpu["mem"]) / np.mean(cpu["fed"]),
            "ratio",
            "extra work the pipeline adds",
        )
        row(
            results,
            section,
            f"{name}: seconds per epoch",
            t_fed * per_epoch,
            "s",
            f"{per_epoch} steps of {bs}, no validation",
        )
        row(results, section, f"{name}: training minutes, whole run", t_fed * per_epoch * c["epochs"] / 60, "min",
            f"{c['epochs']} epochs at that rate")  # fmt: skip
        forward, flops = training_flops(model)
        dtype = "bfloat16" if machine.precision(c["precision"]) == "mixed_bfloat16" else "float32"
        row(
            results,
            section,
            f"{name}: training flops per image",
            flops / 1e9,
            "GFLOP",
            f"forward {forward / 1e9:.3f}; forward + backward, from the graph",
        )
        row(
            results,
            section,
            f"{name}: training flops, whole run",
            flops * len(train) * c["epochs"] / 1e15,
            "PFLOP",
            f"{len(train)} images x {c['epochs']} epochs",
        )
        row(
            results,
            section,
            f"{name}: achieved training flop/s",
            flops * bs / t_fed / 1e9,
            "GFLOP/s",
            f"{dtype}, oneDNN {'on' if machine.onednn_on() else 'off'}",
        )
        row(
            results,
            section,
            f"{name}: mfu",
            flops * bs / t_fed / peak[dtype],
            "",
            f"of the measured {dtype} peak, {peak[dtype] / 1e9:.0f} GFLOP/s",
        )
        keras.backend.clear_session()
