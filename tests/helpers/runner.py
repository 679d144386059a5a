"""The runner and the tools as a user starts them (subprocesses, without pytest's environment), and
the MLflow store they write."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
SHARED_FER = ROOT.parent / "shared" / "fer2013"
# Leave out this machine's conf/local/default.yaml (its data.root, precision, threads): tests see the shared configs
NO_LOCAL = ["~local"]


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


@functools.cache
def empty_store() -> Path:
    """A new MLflow store's database (the schema, no experiment of ours), made once per test process."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = Path(tempfile.mkdtemp(prefix="fer_exp-empty-store-"))
    SqlAlchemyStore(f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri())
    return folder / "mlflow.db"


def new_store(directory: Path) -> None:
    """Start the store in `directory` (a test's tracking.dir) from a copy of empty_store(): MLflow's
    schema migrations take seconds for each new SQLite store, paid here once per test process. The
    runner then finds an empty store and creates its experiment in it, as on a fresh clone."""
    if not (directory / "mlflow.db").exists():
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(empty_store(), directory / "mlflow.db")


def cli(tmp_path, *args, store=True) -> list[str]:
    """The command `python -m fer_exp.run ARGS` with its store and outputs under tmp_path (store=False:
    no store made beforehand; a command on a tracking server gets none)."""
    if store and not any(a.startswith(("tracking=", "tracking.uri=")) for a in args):
        new_store(tmp_path / "mlruns")
    return [
        sys.executable,
        "-m",
        "fer_exp.run",
        *args,
        *NO_LOCAL,
        f"tracking.dir={tmp_path / 'mlruns'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]


def user_env() -> dict[str, str]:
    """The environment for a command run as a user would: without PYTEST_CURRENT_TEST, which
    switches MLflow's SQL store into its own test-suite checks (a write in a session it
    marked read-only raises)."""
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


# `python -m fer_exp.run`, and at its exit a line saying whether TensorFlow was imported
REPORT_TENSORFLOW = (
    "import atexit, runpy, sys; "
    "atexit.register(lambda: print('tensorflow imported:', 'tensorflow' in sys.modules)); "
    "runpy.run_module('fer_exp.run', run_name='__main__', alter_sys=True)"
)


def run_cli(tmp_path, *args, timeout=900, store=True, report_tensorflow=False):
    """Run `python -m fer_exp.run ARGS` (see cli) to its end; report_tensorflow: its last line of
    output says whether TensorFlow was imported."""
    command = cli(tmp_path, *args, store=store)
    if report_tensorflow:
        command[1:3] = ["-c", REPORT_TENSORFLOW]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=user_env())
