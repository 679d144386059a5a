"""Shared fixtures: configs composed like the CLI does, small generated data sets, one real tiny
sweep; and the order in which `make test` runs the test files. Helpers are in tests/helpers/.

Tests that start processes (the runner, servers, a browser, a Ray cluster) are marked
`slow`; `make test-fast` (pytest -m "not slow") runs the rest."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers.data import write_folders
from helpers.runner import CONF, NO_LOCAL, new_store, run_cli

import fer_exp  # noqa: F401  (quiets TensorFlow before any test imports it)


@pytest.fixture
def compose():
    """compose(overrides) -> the DictConfig `python -m fer_exp.run <overrides>` would get."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def _compose(overrides=()):
        for override in overrides:  # a test's own store starts from a copy (helpers.runner.new_store)
            if override.startswith("tracking.dir="):
                new_store(Path(override.split("=", 1)[1]))
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=[*NO_LOCAL, *overrides])

    return _compose


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


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
    """(folder, finished process) of one real 4-job sweep (deep, shallow x 2 lr) on tiny synthetic data."""
    tmp = tmp_path_factory.mktemp("tiny_sweep")
    return tmp, run_cli(tmp, "-m", "model=deep,shallow", "lr=1e-4,1e-3", "debug=tiny")


# `make test` runs on two xdist workers with --dist loadfile, by group: each worker runs a whole group
# at a time, and the groups start in the order below, the slowest first (measured: their totals in
# `pytest --junitxml`), so that no long group starts last and leaves one worker finishing alone. A
# group is a test file, except that the files that read the session's tiny sweep form one group, so
# that one worker makes that sweep, once.
TINY_SWEEP_FILES = ("test_runner.py", "test_results.py", "test_story.py")
HEAVY_FIRST = [
    "tiny_sweep",
    "test_sweeps.py",
    "test_server.py",
    "test_reproduce.py",
    "test_cluster.py",
    "test_search.py",
    "test_ensemble.py",
    "test_distill.py",
    "test_recipe.py",
]


def group(file_name: str) -> str:
    return "tiny_sweep" if file_name in TINY_SWEEP_FILES else file_name


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(group(item.path.name), len(rank)))  # stable: a file's own order is kept


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile by group (above), the groups in the collection's order."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ByGroup(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group(Path(nodeid.split("::", 1)[0]).name)

    config.option.loadscopereorder = False  # xdist would start the groups with the most tests first
    return ByGroup(config, log)
