"""Shared fixtures and helpers: configs composed like the CLI does, small generated data sets,
the runner as a subprocess, temporary MLflow stores, servers on free loopback ports.

Tests that start processes (the runner, servers, a browser, a Ray cluster) are marked
`slow`; `make test-fast` (pytest -m "not slow") runs the rest."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

import fer_exp  # noqa: F401  (quiets TensorFlow before any test imports it)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_FER = ROOT.parent / "shared" / "fer2013"
CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


@pytest.fixture
def compose():
    """compose(overrides) -> the DictConfig `python -m fer_exp.run <overrides>` would get."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def _compose(overrides=()):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))

    return _compose


def write_folders(
    root: Path, per_class: int = 3, splits=("train", "validation"), classes=CLASSES, ext: str = ".png", seed: int = 0
):
    """Class folders of synthetic faces: root/<split>/<class>/<i><ext>. Returns {split: Split}."""
    from fer_exp.data import synthetic_split

    out = {}
    for k, split in enumerate(splits):
        s = synthetic_split(per_class, list(classes), 48, seed=seed + k)
        for i, (img, label) in enumerate(zip(s.images, s.labels)):
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(folder / f"{i:04d}{ext}"), img)
        out[split] = s
    return out


@pytest.fixture
def folders(tmp_path):
    root = tmp_path / "fer"
    write_folders(root)
    return root


@pytest.fixture
def tiny_rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def no_tracking_uri_leak():
    """mlflow.set_tracking_uri() also sets MLFLOW_TRACKING_URI, which the config reads:
    keep one test's store out of the next test's config and subprocesses."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def dirty_folders(root: Path) -> Path:
    """Class folders (2 JPEGs a class) whose train/happy also holds every kind of odd input: a
    truncated JPEG, an empty file, a text file (all three skipped), a colour PNG, a PNG with
    alpha (both turned gray) and an oversized BMP (resized)."""
    write_folders(root, per_class=2, ext=".jpg")
    happy = root / "train" / "happy"
    good = next(happy.iterdir()).read_bytes()
    (happy / "corrupt.jpg").write_bytes(good[: len(good) // 2])
    (happy / "empty.jpg").write_bytes(b"")
    (happy / "notes.jpg").write_text("not an image at all")
    rng = np.random.default_rng(0)
    cv2.imwrite(str(happy / "colour.png"), rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    cv2.imwrite(str(happy / "alpha.png"), rng.integers(0, 255, (48, 48, 4), dtype=np.uint8))
    cv2.imwrite(str(happy / "big.bmp"), rng.integers(0, 255, (100, 100), dtype=np.uint8))
    return root


def by_class(split):
    """The images of a generated split in the loader's order: class by class, file order."""
    order = np.concatenate([np.flatnonzero(split.labels == c) for c in range(len(CLASSES))])
    return split.images[order], split.labels[order]


def write_csv(path, splits, rows_before=(), rows_after=()):
    """fer2013.csv (emotion,pixels,Usage; the CSV's own emotion ids) from {Usage: Split}."""
    csv_ids = {name: i for i, name in enumerate(["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"])}
    lines = ["emotion,pixels,Usage", *rows_before]
    for usage, split in splits.items():
        images, labels = by_class(split)
        for img, lab in zip(images, labels):
            lines.append(f"{csv_ids[CLASSES[lab]]},{' '.join(map(str, img.ravel()))},{usage}")
    path.write_text("\n".join([*lines, *rows_after]) + "\n")


def store(tmp_path):
    """(client, every run) of the MLflow store a test's runner wrote under tmp_path/mlruns."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name("fer_exp")
    return client, client.search_runs([exp.experiment_id], max_results=100)


def jobs(runs):
    return [r for r in runs if r.data.tags.get("fer_exp.role") == "job"]


def cli(tmp_path, *args) -> list[str]:
    """The command `python -m fer_exp.run ARGS` with its store and outputs under tmp_path."""
    return [
        sys.executable,
        "-m",
        "fer_exp.run",
        *args,
        f"tracking.dir={tmp_path / 'mlruns'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]


def user_env() -> dict[str, str]:
    """The environment for a command run as a user would: without PYTEST_CURRENT_TEST, which
    switches MLflow's SQL store into its own test-suite checks (a write in a session it
    marked read-only raises)."""
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


def run_cli(tmp_path, *args, timeout=900):
    """Run `python -m fer_exp.run ARGS` (see cli) to its end."""
    return subprocess.run(
        cli(tmp_path, *args), cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=user_env()
    )


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
    """(folder, finished process) of one real 4-job sweep (deep, shallow x 2 lr) on tiny synthetic data."""
    tmp = tmp_path_factory.mktemp("tiny_sweep")
    return tmp, run_cli(tmp, "-m", "model=deep,shallow", "lr=1e-4,1e-3", "debug=tiny")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until `url` answers; fail at once if the server process exits."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read()[-3000:] if proc.stdout else ""
            raise AssertionError(f"server exited {proc.returncode}: {out}")
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer in {timeout} s")


def start(command, log: Path, env=None, shell=False, cwd=ROOT) -> subprocess.Popen:
    """A long-running process in its own process group (killed with everything it started)."""
    return subprocess.Popen(
        command,
        cwd=cwd,
        shell=shell,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**user_env(), **(env or {})},
    )


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def make_command(target: str, **variables) -> str:
    """The command line `make TARGET VAR=...` runs (from a dry run), to start it as a process here."""
    dry = subprocess.run(
        ["make", "-s", "-n", target, *(f"{k}={v}" for k, v in variables.items())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return dry.stdout.replace("\\\n", " ").strip().splitlines()[-1]


# The slowest files first (measured: `make test` prints the slowest tests). `make test` gives each of
# its two xdist workers a whole file at a time, in this order: a long file started last would leave
# one worker finishing alone.
HEAVY_FIRST = [
    "test_server.py",
    "test_search.py",
    "test_reproduce.py",
    "test_sweeps.py",
    "test_cluster.py",
    "test_story.py",
]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept
