"""Keras callbacks that keep a job safe and recorded: signals, time budgets,
per-epoch metrics and speed, resumable checkpoints (the Optuna trial's reporter is sweeps.trial's)."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import keras

from fer_exp import tracking
from fer_exp.models import training_flops
from fer_exp.training import machine

log = logging.getLogger(__name__)


_signalled: list[int] = []  # signals received in this process


def install_signal_handlers() -> None:
    """SIGINT/SIGTERM ask the job to stop at the next batch boundary; a second one stops at once.

    Raising KeyboardInterrupt straight from a signal can land inside native code
    (HDF5, TensorFlow) and corrupt its state, so the first signal only sets a flag.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        _signalled.append(signum)
        if len(_signalled) > 1:
            raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def raise_if_signalled() -> None:
    if _signalled:
        raise KeyboardInterrupt(f"signal {_signalled[0]}")


class StopOnSignal(keras.callbacks.Callback):
    """Turns a received SIGINT/SIGTERM into KeyboardInterrupt between batches."""

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        raise_if_signalled()

    def on_test_batch_end(self, batch: int, logs=None) -> None:
        raise_if_signalled()


class TimeBudget(keras.callbacks.Callback):
    """Stop after the epoch in progress once `max_minutes` have passed since training began."""

    def __init__(self, max_minutes: float | None):
        super().__init__()
        self.max_minutes = max_minutes
        self.triggered = False

    def on_train_begin(self, logs=None) -> None:
        self.start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self.max_minutes and time.monotonic() - self.start >= 60 * self.max_minutes:
            self.triggered = True
            self.model.stop_training = True


class EpochLogger(keras.callbacks.Callback):
    """Logs every Keras epoch metric plus the learning rate to the active run."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items()}
        metrics["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        tracking.log_metrics(metrics, step=epoch)


class EpochSpeed(keras.callbacks.Callback):
    """Logs each epoch's training speed, validation left out: its seconds, images/s and the achieved
    GFLOP/s (`flops_per_image`: models.training_flops), so that every run measures its own speed; and
    its MFU, the achieved over the machine's peak GFLOP/s, where `make bench` measured one."""

    def __init__(self, images: int, flops_per_image: int, peak_gflops: float | None = None):
        super().__init__()
        self.images, self.flops_per_image, self.peak = images, flops_per_image, peak_gflops

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.start, self.trained = time.monotonic(), None

    def on_test_begin(self, logs=None) -> None:  # the epoch's validation begins
        if self.trained is None:
            self.trained = time.monotonic() - self.start

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        seconds = max(self.trained if self.trained is not None else time.monotonic() - self.start, 1e-9)
        rate = self.images / seconds
        speed = {"epoch_train_seconds": seconds, "images_per_s": rate, "gflop_per_s": rate * self.flops_per_image / 1e9}
        if self.peak:
            speed["mfu"] = speed["gflop_per_s"] / self.peak
        tracking.log_metrics(speed, step=epoch)


class DropHdf5Notice(logging.Filter):
    """Keras warns at every .h5 save; the notebook's format is kept on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "HDF5 file" not in record.getMessage()


DROP_HDF5_NOTICE = DropHdf5Notice()  # train() adds it to absl's logger around fit


def fit_verbosity(setting) -> int:
    """verbose=auto: Keras's progress bar on a terminal, one line per epoch elsewhere."""
    if setting == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(setting)


def speed_meter(model: keras.Model, where: dict[str, str], images: int) -> EpochSpeed:
    """Logs the model's size and training FLOPs per image; the callback that logs each epoch's speed
    (and MFU against the bench's peak for this CPU, when measured; none on a GPU)."""
    flops = training_flops(model)[1]  # per image, forward + backward
    tracking.log_metrics({"params": model.count_params(), "train_gflop_per_image": flops / 1e9})
    peak = machine.peak_gflops(where["precision"]) if where["gpu"] == "none" else None
    return EpochSpeed(images, flops, peak)


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch, save what a resumed run needs into `folder` and log it to the run's
    checkpoint/ artifacts (restore() reads it back):

    last.keras: the model with its optimizer state (so lr schedules continue);
    state.json: the epoch, the best monitored value so far and the history;
    best.h5: a copy of the best model so far.
    """

    ARTIFACTS, LAST, STATE, BEST = "checkpoint", "last.keras", "state.json", "best.h5"

    def __init__(self, folder: Path, best_checkpoint: keras.callbacks.ModelCheckpoint, history: dict | None = None):
        super().__init__()
        self.folder, self.best_checkpoint = Path(folder), best_checkpoint
        self.history = {k: list(v) for k, v in (history or {}).items()}

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(float(v))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.model.save(self.folder / self.LAST)
        best = self.best_checkpoint.best
        state = {"epoch": epoch, "best": None if best is None else float(best), "history": self.history}
        (self.folder / self.STATE).write_text(json.dumps(state))
        files = [self.folder / self.LAST, self.folder / self.STATE]
        best_file = Path(self.best_checkpoint.filepath)
        if best_file.exists():
            shutil.copyfile(best_file, self.folder / self.BEST)
            files.append(self.folder / self.BEST)
        tracking.log_files(files, self.ARTIFACTS)
        tracking.set_tags({tracking.TAG_CHECKPOINT: str(epoch + 1)})

    @classmethod
    def restore(
        cls, run_id: str, dst: Path, best_checkpoint: keras.callbacks.ModelCheckpoint, model: keras.Model
    ) -> dict:
        """Load run `run_id`'s last checkpoint into `model` (compiled as its config says): the weights and the
        optimizer state, so schedules continue. Its best model so far becomes best_checkpoint's file and best
        value. Returns the state.

        The model comes from the config, not from the archive's compile config: Keras (3.15) drops the
        optimizer from a model's compile config when it saves the model as .h5 (best_checkpoint does), and
        load_model would then compile the default RMSprop (keras-team/keras#23475)."""
        folder = tracking.download_artifacts(run_id, cls.ARTIFACTS, dst)
        if folder is None or not (folder / cls.STATE).is_file():
            raise FileNotFoundError(f"run {run_id} has no {cls.ARTIFACTS}/{cls.STATE} to resume from")
        state = json.loads((folder / cls.STATE).read_text())
        model.optimizer.build(model.trainable_variables)
        model.load_weights(folder / cls.LAST)
        if (folder / cls.BEST).exists():
            (folder / cls.BEST).replace(best_checkpoint.filepath)
            best_checkpoint.best = state["best"]
        return state
