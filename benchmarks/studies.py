"""One-off studies, not in the default run (`--sections notebook,kernels,profile`): the notebook's
augmentation against ours, kernel settings per model, and where a recipe step's time goes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from common import MODEL_CONFIGS, ROOT, config, pipeline_rate, row, step_time

from fer_exp.data import Split, build_augmenter, make_dataset
from fer_exp.training import compile_model, machine

BENCH = Path(__file__).with_name("bench.py")

# --- notebook: Keras 2's ImageDataGenerator against the tf.data pipeline ---------------------


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


def bench_notebook(results: dict, train: Split, batches: int) -> None:
    """The notebook's generator lives on only in a private Keras module: this study may stop working
    with a Keras release, and then says so."""
    try:
        generator = notebook_generator(train, 64)
    except ImportError as e:
        print(f"  notebook: Keras no longer has its legacy ImageDataGenerator ({e}); skipped", flush=True)
        return
    row(
        results,
        "notebook",
        "notebook ImageDataGenerator (augment=notebook)",
        pipeline_rate(generator, batches),
        "images/s",
    )
    aug = build_augmenter(**config("augment=notebook")["augment"], seed=0)
    ds = make_dataset(train.images, train.labels, 7, 64, aug, training=True, seed=0)
    row(results, "notebook", "tf.data, augment=notebook, batch 64", pipeline_rate(ds, batches), "images/s")


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
                [sys.executable, str(BENCH), "--probe", name, "--budget", str(budget)],
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


# --- distill: what the teachers cost a distilled run, in the two designs --------------------------


def bench_distill(results: dict, train: Split, budget: float, teachers: int = 3, views: int = 10) -> None:
    """A `fast` student taught by `teachers` models of its own size (untrained: the speed is the same):
    its training step with [labels | probabilities] targets, and the teachers' forward pass at the
    training batch size (what an online teacher adds to every step) and in predict's batches of 256
    (what fer_exp computes once per training image and view). Both as a share of the student's
    training time over `fast`'s epochs. Then distill.views=online as it runs: the student's fit fed by
    the augmenting pipeline with the teachers in it, against the same pipeline carrying probabilities."""
    from fer_exp.models.evaluation import view_probabilities
    from fer_exp.training.teachers import online as online_teacher

    c = config("experiment=fast", "teacher=bench", "distill.views=1")
    bs, epochs, n = c["batch_size"], c["epochs"], len(train)
    keras.utils.set_random_seed(c["seed"])
    student = compile_model(c, 7, -(-n // bs))
    models = [compile_model(c, 7, 1) for _ in range(teachers)]
    aug = build_augmenter(**c["augment"], seed=c["seed"])
    soft = np.full((n, 7), 1 / 7, np.float32)
    pool = [
        (x.numpy(), y.numpy()) for x, y in make_dataset(train.images, train.labels, 7, bs, aug, True, 1, soft).take(16)
    ]
    batches = tf.data.Dataset.from_tensor_slices(tuple(np.concatenate(p) for p in zip(*pool))).repeat().batch(bs)
    step = step_time(student, batches, budget)[0] / bs  # seconds per training image
    forward = tf.function(lambda x: [m(x, training=False) for m in models])
    x = tf.constant(pool[0][0])
    forward(x)
    start, rounds = time.perf_counter(), 0
    while time.perf_counter() - start < budget / 2:
        forward(x)
        rounds += 1
    online = (time.perf_counter() - start) / rounds / bs  # the teachers' seconds per training image, every epoch
    sample = train.images[:2048]
    start = time.perf_counter()
    view_probabilities(models[0], sample, views)
    once = (time.perf_counter() - start) / len(sample) * teachers  # per training image, all views and teachers
    row(
        results,
        "distill",
        f"fast student: training step, {teachers} teachers' targets",
        1 / step,
        "images/s",
        f"batch {bs}",
    )
    row(results, "distill", f"{teachers} fast teachers: forward pass per training batch", 1 / online, "images/s")
    row(results, "distill", "online teachers: added to the student's training time", online / step, "ratio",
        "the teachers' forward pass on every augmented batch, every epoch")  # fmt: skip
    row(results, "distill", f"once, {views} views: added to {epochs} epochs of training", once / (epochs * step), "ratio",
        f"{once * n / 60:.1f} min for {n} images, before the first epoch")  # fmt: skip
    # distill.views=online as fer_exp runs it: the teachers inside the augmenting input pipeline,
    # against the same pipeline carrying precomputed probabilities
    piped = make_dataset(train.images, train.labels, 7, bs, aug, True, 1, soft).repeat()
    live = make_dataset(train.images, train.labels, 7, bs, aug, True, 1, teacher=online_teacher(models)).repeat()
    piped_step, live_step = (step_time(student, ds, budget)[0] / bs for ds in (piped, live))
    row(results, "distill", "fast student, fed by the augmenting pipeline", 1 / piped_step, "images/s",
        "precomputed probabilities (distill.views=1 or 10)")  # fmt: skip
    row(results, "distill", "the same with the online teachers in the pipeline", 1 / live_step, "images/s",
        "distill.views=online")  # fmt: skip
    row(results, "distill", "distill.views=online: added to the student's training time", live_step / piped_step - 1,
        "ratio", "measured through fit, every epoch")  # fmt: skip
