"""A job's tracking calls while its server does not answer: kept in order in a spool folder on
disk, sent as soon as the server answers again, and left there for `python -m fer_exp.sync` when
the server stays away longer than the job's limit (tracking.outage_minutes).

This module knows nothing of MLflow: tracking/outage.py gives it the function that sends a call and the
probe that says whether the server answers. A call is a name and its keyword arguments; paths
among them are copied into the spool (a checkpoint is overwritten by the next epoch), NumPy
arrays and Keras models are saved there.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CALLS, RUN = "calls.jsonl", "run.json"  # the queued calls, oldest first; what run they belong to
START = "start_run"  # the first call of a run that began while its server was away: it creates the run


def answers(uri: str, timeout: float = 3.0) -> bool:
    """Whether an HTTP tracking server answers at all (any status: a 401 is an answer)."""
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


class Outbox:
    """Sends a run's tracking calls through `send(name, kwargs)`, in order. A call that fails while
    `probe()` says the server is away starts an outage: from then on calls go to `folder` (on disk
    at once, so that not even a crash loses them) and are sent in order once the server answers.
    After `limit_s` of outage it stops trying; the folder is then the run's spool."""

    def __init__(
        self,
        folder: Path,
        run: dict,
        send: Callable[[str, dict], Any],
        probe: Callable[[], bool],
        limit_s: float,
        probe_every_s: float = 10.0,
    ):
        self.folder, self.run, self.send, self.probe, self.limit_s = Path(folder), run, send, probe, limit_s
        self.queued = 0  # calls kept on disk and not yet sent
        self.down_since: float | None = None
        self.probe_every_s, self.next_probe = (
            probe_every_s,
            0.0,
        )  # while it is away, the server is asked at most this often

    def deliver(self, call: str, /, **kwargs) -> None:
        if not self.queued and self.down_since is None:
            try:
                self.send(call, kwargs)
                return
            except Exception:
                if self.probe():
                    raise  # the server answers: a real error, not an outage
            self.down_since = time.monotonic()
            log.warning(
                "the tracking server does not answer; training goes on, and its records wait in %s until it does (up to %s min)",
                self.folder,
                f"{self.limit_s / 60:g}",
            )
        self._keep(call, kwargs)
        self.flush()

    def start_down(self, call: str, /, **kwargs) -> None:
        """The server was away before the run began: queue its first call (the run's creation, whose
        result is the run's id on the server) without trying it."""
        self.down_since = time.monotonic()
        self._keep(call, kwargs)

    def gave_up(self) -> bool:
        return self.down_since is not None and time.monotonic() - self.down_since > self.limit_s

    def flush(self) -> bool:
        """Send the queued calls in order if the server answers; whether none is left."""
        if not self.queued:
            return True
        if self.gave_up() or time.monotonic() < self.next_probe:
            return False
        if not self.probe():
            self.next_probe = time.monotonic() + self.probe_every_s
            return False
        calls = read_calls(self.folder)
        while calls:
            try:
                self.created(calls[0][0], self.send(calls[0][0], unpack(calls[0][1], self.folder)))
            except Exception:
                if self.probe():
                    raise
                return False  # away again; the rest stays queued
            calls.pop(0)
            write_calls(self.folder, calls)
            self.queued = len(calls)
        log.warning(
            "the tracking server answers again after %.0f s: sent the records kept meanwhile",
            time.monotonic() - self.down_since,
        )
        shutil.rmtree(self.folder, ignore_errors=True)
        self.down_since = None
        return True

    def close(self) -> bool:
        """At the run's end: wait for the server (up to the limit) and send everything; whether all
        was sent. If not, the folder is the run's spool and stays."""
        said = -60.0
        while not self.flush():
            if self.gave_up():
                return False
            away = time.monotonic() - self.down_since
            if away - said >= 60:  # once a minute
                log.warning(
                    "waiting for the tracking server to send %d record(s): away for %.0f s, giving up after %.0f s",
                    self.queued,
                    away,
                    self.limit_s,
                )
                said = away
            time.sleep(max(0.0, min(self.next_probe - time.monotonic(), self.limit_s - away)) + 0.05)
        return True

    def created(self, call: str, result) -> None:
        """After a queued START call was sent: the run exists on the server, with the id it returned."""
        if call == START:
            self.run.update(run_id=result, pending=False)
            (self.folder / RUN).write_text(json.dumps(self.run, indent=1))

    def _keep(self, call: str, kwargs: dict) -> None:
        if not self.queued:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / RUN).write_text(json.dumps(self.run, indent=1))
        calls = read_calls(self.folder)
        if (
            call == "log_files"
        ):  # a later upload overwrites the artifacts: an unsent older copy (last epoch's checkpoint) need not go
            for old in [
                c for c in calls if c[0] == "log_files" and _files_of(unpack(c[1], self.folder)) == _files_of(kwargs)
            ]:
                calls.remove(old)
                shutil.rmtree(self.folder / "files" / old[2], ignore_errors=True)
        key = f"{time.time_ns()}"
        calls.append([call, pack(kwargs, self.folder, key), key])
        write_calls(self.folder, calls)
        self.queued = len(calls)


def _files_of(kwargs: dict) -> dict:
    return {"folder": kwargs.get("folder"), "names": sorted(p.name for p in kwargs["paths"])}


def read_calls(folder: Path) -> list[list]:
    path = Path(folder) / CALLS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def write_calls(folder: Path, calls: list[list]) -> None:
    tmp = Path(folder) / (CALLS + ".tmp")
    tmp.write_text("".join(json.dumps(c) + "\n" for c in calls))
    tmp.replace(Path(folder) / CALLS)


def pack(value, folder: Path, key: str):
    """`value` as JSON, with paths copied into folder/files/<key>/ and arrays and Keras models saved there."""
    if isinstance(value, Path):
        dst = folder / "files" / key / value.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(value, dst)
        return {"file": str(dst.relative_to(folder))}
    if isinstance(value, dict):
        return {"dict": {k: pack(v, folder, key) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return [pack(v, folder, key) for v in value]
    if type(value).__module__ == "numpy":
        import numpy as np

        dst = folder / "files" / key / f"array{len(list(folder.glob(f'files/{key}/array*')))}.npy"
        dst.parent.mkdir(parents=True, exist_ok=True)
        np.save(dst, value)
        return {"npy": str(dst.relative_to(folder))}
    if hasattr(value, "save") and hasattr(value, "layers"):  # a Keras model
        dst = folder / "files" / key / "model.keras"
        dst.parent.mkdir(parents=True, exist_ok=True)
        value.save(dst)
        return {"keras": str(dst.relative_to(folder))}
    return value


def unpack(value, folder: Path):
    """pack's inverse."""
    if isinstance(value, list):
        return [unpack(v, folder) for v in value]
    if not isinstance(value, dict):
        return value
    if "file" in value:
        return folder / value["file"]
    if "npy" in value:
        import numpy as np

        return np.load(folder / value["npy"])
    if "keras" in value:
        import keras

        return keras.models.load_model(folder / value["keras"], compile=False)
    return {k: unpack(v, folder) for k, v in value["dict"].items()}
