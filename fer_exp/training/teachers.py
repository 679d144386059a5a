"""A distilled job's teachers (teacher=, Hinton, Vinyals and Dean 2015, arXiv 1503.02531): found and
checked before the job's run begins, and their class probabilities of the training images, which the
student learns from beside its labels (the loss: compiled.DistillationLoss).

A teacher is a run id (a job or an ensemble run), runs:/<id>/model, models:/<name>@<alias> | /<version>,
or a path to a .h5 with classes.json beside it. A run's teacher is its model.h5 and classes.json, so
that every kind is a file whose SHA-256 the student records (its lineage) and `reproduce` checks.

The probabilities are computed once per training image, as the mean over its distill.views test-time
views and over the teachers (as fer_exp.ensemble averages its members), not on every augmented batch:
benchmarks/README.md ("Distillation") measures both. They are kept in data.cache_dir, so that the next
job with the same teachers, images and views (a seed sweep of students) reuses them. With
distill.views=online the teachers instead see each augmented batch in the input pipeline (`online`):
consistent targets, at the price of their forward pass on every batch. Nothing here loads
TensorFlow until `load`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from fer_exp.models.saved import read_classes

log = logging.getLogger(__name__)
MODEL_FILE, CLASSES_FILE = "model.h5", "classes.json"  # what every job and ensemble run logs (log_evaluation)


class TeacherError(ValueError):
    """A teacher that cannot teach this job; the message names it and says what is wrong."""


@dataclass
class Teacher:
    ref: str  # as given on the command line
    file: Path  # its model file, here
    classes: list[str]
    sha256: str  # of the model file: what `reproduce` checks
    run_id: str | None = None  # None: a file
    name: str = ""  # the run's name
    members: list[str] = field(default_factory=list)  # an ensemble run's member ids

    def lineage(self) -> dict:
        """What the student records of this teacher (tag fer_exp.teachers)."""
        return {"ref": self.ref, "run_id": self.run_id, "members": self.members, "classes": self.classes,
                "sha256": self.sha256}  # fmt: skip

    def describe(self) -> str:
        if self.run_id is None:
            return f"file {self.file}"
        what = f"ensemble of {len(self.members)} runs" if self.members else self.name or "run"
        return f"{what} (run {self.run_id[:8]})"


def refs_of(value) -> list[str]:
    """teacher= as a list of references: null -> [], one -> [it], [a,b] -> [a, b]."""
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) or hasattr(value, "_content") else [str(value)]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def lineage(teachers: list[Teacher]) -> dict[str, str]:
    """The student's tags: its teachers as JSON, and one line saying what it was distilled from."""
    from fer_exp import tracking

    return {
        tracking.TAG_TEACHERS: json.dumps([t.lineage() for t in teachers]),
        tracking.TAG_DISTILLED_FROM: " + ".join(t.describe() for t in teachers),
    }


def _is_file(ref: str) -> bool:
    return ":/" not in ref and (Path(ref).suffix in (".h5", ".keras") or "/" in ref or Path(ref).exists())


def _from_file(ref: str) -> Teacher:
    path = Path(ref).expanduser()
    if not path.is_file():
        raise TeacherError(f"teacher={ref}: no such file ({path.resolve()})")
    classes = read_classes(path)
    if classes is None:
        raise TeacherError(f"teacher={ref}: no {CLASSES_FILE} beside it to say which classes its outputs are")
    return Teacher(ref, path, classes, sha256(path))


def _from_run(ref: str, dst: Path) -> Teacher:
    from fer_exp import tracking

    try:
        run_id = tracking.resolve_run(ref)
        record = tracking.get_record(run_id)
    except tracking.TrackingError as e:
        raise TeacherError(
            f"teacher={ref}: not found in {tracking.resolve_uri(None)} ({e.message.splitlines()[0]}); a teacher is a "
            "run id, runs:/<id>/model, models:/<name>@<alias> or a path to a .h5 with classes.json beside it"
        ) from None
    if record["deleted"] or record["status"] != "FINISHED":
        state = "deleted" if record["deleted"] else record["status"]
        raise TeacherError(
            f"teacher={ref}: run {run_id} ({record['name']}) is {state}; a teacher must be a FINISHED run"
        )
    members = [m for m in record["tags"].get(tracking.TAG_MEMBERS, "").split(",") if m]
    gone = [m for m in members if not _exists(m)]
    if gone:
        raise TeacherError(
            f"teacher={ref}: ensemble run {run_id} averages runs that are gone (deleted or missing): {', '.join(gone)}; "
            "restore them (mlflow runs restore --run-id ...) or name other teachers"
        )
    files = tracking.download_files(run_id, [MODEL_FILE, CLASSES_FILE], dst / run_id)
    if files is None:
        raise TeacherError(f"teacher={ref}: run {run_id} ({record['name']}) logged no {MODEL_FILE} with {CLASSES_FILE}")
    return Teacher(ref, files[0], json.loads(files[1].read_text()), sha256(files[0]), run_id, record["name"], members)


def _exists(run_id: str) -> bool:
    from fer_exp import tracking

    try:
        return not tracking.get_record(run_id)["deleted"]
    except tracking.TrackingError:
        return False


def find(refs: list[str], classes: list[str], dst: Path) -> list[Teacher]:
    """The teachers `refs` name, their files in (or downloaded into) `dst`, each checked to exist, to be
    FINISHED (an ensemble's members too) and to name `classes` in the same order; raises TeacherError.
    The MLflow store must be configured (tracking.configure)."""
    teachers = []
    for ref in refs:
        teacher = _from_file(ref) if _is_file(ref) else _from_run(ref, Path(dst))
        if teacher.classes != list(classes):
            raise TeacherError(
                f"teacher={ref} ({teacher.describe()}) names the classes {teacher.classes}, this job's data "
                f"{list(classes)}; a teacher must name the same classes in the same order"
            )
        teachers.append(teacher)
    return teachers


def load(teachers: list[Teacher], image_size: int) -> list:
    """The teachers' Keras models, each checked to take this job's image size; raises TeacherError."""
    import keras

    from fer_exp.models import layers  # noqa: F401  (registers FusedBatchNormalization for keras's loader)

    models = []
    for t in teachers:
        model = keras.models.load_model(t.file, compile=False)
        if tuple(model.input_shape[1:3]) != (image_size, image_size):
            raise TeacherError(
                f"teacher={t.ref} ({t.describe()}) takes {model.input_shape[1]}x{model.input_shape[2]} images, this "
                f"job's data {image_size}x{image_size} (data.image_size); a teacher must take the student's input"
            )
        models.append(model)
    return models


def probabilities(models: list, images, views: int, verbose: int = 0):
    """(N, classes) float32: the teachers' class probabilities of uint8 (N, H, W) images, each the mean
    over `views` test-time views and over the teachers."""
    import numpy as np

    from fer_exp.models.evaluation import view_probabilities

    total = None
    for k, model in enumerate(models, 1):
        log.info("teacher %d of %d: class probabilities of %d training images, %d view(s) each", k, len(models),
                 len(images), views)  # fmt: skip
        probs = view_probabilities(model, images, views, verbose=verbose).mean(axis=0)
        total = probs if total is None else total + probs
    return (total / len(models)).astype(np.float32)


def online(models: list):
    """The teachers as a function of an augmented batch of model inputs: the mean of their probabilities
    (distill.views=online: the targets of the very views the student sees, "consistent" in Beyer et al.
    2022, arXiv 2106.05237)."""
    from keras import ops

    def teacher(x):
        return ops.mean(ops.stack([ops.cast(m(x, training=False), "float32") for m in models]), axis=0)

    return teacher


def cached_probabilities(
    found: list[Teacher], models: list, images, views: int, cache_dir: str | None, verbose: int = 0
):
    """probabilities(), read from `cache_dir` when a job with the same teachers (by the SHA-256 of their
    files), images, views and precision already computed them, and else computed and written there."""
    import keras
    import numpy as np

    if not cache_dir:
        return probabilities(models, images, views, verbose)
    key = {"teachers": [t.sha256 for t in found], "views": views, "policy": keras.config.dtype_policy().name,
           "images": list(images.shape)}  # fmt: skip
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(images).data)
    path = Path(cache_dir) / f"teachers-{digest.hexdigest()[:20]}.npy"
    if path.is_file():
        try:
            soft = np.load(path, allow_pickle=False)
            if soft.shape[0] == len(images):
                log.info("the teachers' probabilities: reused from %s", path)
                return soft
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable cache %s (%s)", path, e)
    soft = probabilities(models, images, views, verbose)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")  # atomic: parallel jobs share the cache
    with open(tmp, "wb") as f:
        np.save(f, soft)
    os.replace(tmp, path)
    return soft


def teach(found: list[Teacher], models: list, images, views: int, cache_dir: str | None, verbose: int = 0):
    """cached_probabilities(), timed: the job records the seconds as its teacher_seconds."""
    from fer_exp import tracking

    start = time.time()
    soft = cached_probabilities(found, models, images, views, cache_dir, verbose)
    seconds = time.time() - start
    tracking.log_metrics({"teacher_seconds": seconds})
    log.info("the teachers' probabilities: %.0f s (%d teacher(s), %d view(s))", seconds, len(models), views)
    return soft


def targets(found: list[Teacher], models: list, images, views, cache_dir: str | None, verbose: int = 0) -> tuple:
    """What the student's pipeline learns from beside its labels, as (soft, teacher): the probabilities of
    each image (teach) or, with views="online", the teachers of each augmented batch; (None, None)
    without teachers."""
    if not found:
        return None, None
    if views == "online":
        return None, online(models)
    return teach(found, models, images, views, cache_dir, verbose), None
