"""Trained models with their class names: the list that travels with a model (classes.json beside its
.h5, or its MLflow model's metadata), and loading a model from a file or an MLflow URI."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from fer_exp.config import conf_dir

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

CLASSES_KEY = "classes"  # in an MLflow model's metadata, and the name of the file beside model.h5


# For a bare .h5 without its class list: FER2013's seven classes, as conf/data/ sets them.
FER7_FILE = conf_dir() / "data" / "_fer7.yaml"


def classes_file(model_file: str | Path) -> Path:
    """Where the class list of `model_file` is kept: classes.json in the same folder."""
    return Path(model_file).with_name(f"{CLASSES_KEY}.json")


def write_classes(model_file: str | Path, classes: list[str]) -> Path:
    path = classes_file(model_file)
    path.write_text(json.dumps(list(classes)) + "\n")
    return path


def read_classes(model_file: str | Path) -> list[str] | None:
    path = classes_file(model_file)
    return json.loads(path.read_text()) if path.is_file() else None


def classes_for(model: keras.Model, classes: list[str] | None, source: str) -> list[str]:
    """The model's class names: those it came with, else FER2013's seven when it has 7 outputs."""
    outputs = int(model.output_shape[-1])
    if classes is None:
        from omegaconf import OmegaConf

        classes = list(OmegaConf.load(FER7_FILE).classes)
        log.warning("%s carries no class list; assuming FER2013's %s", source, ", ".join(classes))
    if len(classes) != outputs:
        raise ValueError(
            f"{source} has {outputs} outputs but its class list has {len(classes)}: {list(classes)}; "
            f"put the right list in {CLASSES_KEY}.json beside the model file"
        )
    return list(classes)


def load_model(uri: str, tracking_uri: str | None = None, tracking_dir: str | Path = "mlruns"):
    """(Keras model, its class names) from a file (.h5, .keras) or an MLflow URI (runs:/..., models:/...)."""
    import keras

    from fer_exp import tracking
    from fer_exp.models import layers  # noqa: F401  (registers FusedBatchNormalization for keras's loader)

    if "://" not in uri and ":/" not in uri:
        if not Path(uri).exists():
            raise FileNotFoundError(
                f"model file not found: {Path(uri).resolve()} (model=path/to/model.h5 or runs:/RUN_ID/model)"
            )
        model, classes = keras.models.load_model(uri, compile=False), read_classes(uri)
    else:
        model, metadata = tracking.load_logged_model(uri, tracking.resolve_uri(tracking_uri, tracking_dir))
        classes = metadata.get(CLASSES_KEY)
    return model, classes_for(model, classes, uri)
