"""The runner for real: Hydra multiruns in a subprocess, a temporary SQLite MLflow store."""

import re
import signal
import socket
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from helpers.data import dirty_folders, write_csv, write_folders
from helpers.runner import ROOT, run_cli, store, user_env
from mlflow.tracking import MlflowClient

slow = pytest.mark.slow


@slow
def test_sweep_of_two_models_and_two_learning_rates(tiny_sweep):
    tmp_path, p = tiny_sweep
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    output = p.stdout + p.stderr  # a new store: no earlier run to estimate from; then an ETA after each job
    assert "4 jobs (no earlier run to go by: no time estimate)" in output
    assert all(f"job {k} of 4 done, ETA " in output for k in (1, 2, 3, 4))
    client, runs = store(tmp_path)
    parents = [r for r in runs if r.data.tags.get("fer_exp.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert len(children) == 4 == len(runs) - 1
    assert all(r.info.status == "FINISHED" for r in children)
    names = {r.info.run_name for r in children}
    assert {n.split(",debug=")[0] for n in names} == {
        "model=deep,lr=0.0001",
        "model=deep,lr=0.001",
        "model=shallow,lr=0.0001",
        "model=shallow,lr=0.001",
    }
    assert not any("tracking.dir" in n for n in names)
    for r in children:
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {
            "model.h5",
            "curves.png",
            "confusion_matrix.png",
            "classification_report.json",
            "classification_report.txt",
            "config.yaml",
        } <= arts
        assert {"data/class_counts.txt", "data/class_counts.json"} <= {
            a.path for a in client.list_artifacts(r.info.run_id, "data")
        }
        for key in (
            "loss",
            "accuracy",
            "precision",
            "recall",
            "val_loss",
            "val_accuracy",
            "val_precision",
            "val_recall",
            "lr",
        ):
            assert [m.step for m in client.get_metric_history(r.info.run_id, key)] == [0], key
        assert r.data.params["model.name"] in ("deep", "shallow") and r.data.params["epochs"] == "1"
        assert r.data.tags["fer_exp.sweep_id"] == parent and len(r.data.tags["fer_exp.config_hash"]) == 16
        assert {d.dataset.name for d in r.inputs.dataset_inputs} == {"synthetic-train", "synthetic-validation"}
        assert 0 <= r.data.metrics["best_val_accuracy"] <= 1 and r.data.metrics["train_seconds"] > 0
    deep = next(r for r in children if r.data.params["model.name"] == "deep")
    assert deep.data.metrics["params"] == 856_711
    assert len({r.data.tags["fer_exp.config_hash"] for r in children}) == 4
    # the logged model predicts 7 probabilities per face through the generic pyfunc API
    model = mlflow.pyfunc.load_model(f"runs:/{deep.info.run_id}/model")
    probs = np.asarray(model.predict(np.random.default_rng(0).random((3, 48, 48, 1), dtype=np.float32)))
    assert probs.shape == (3, 7) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert "4 job(s), 0 not finished" in p.stdout


@slow
def test_the_next_sweeps_estimate_goes_by_the_runs_of_its_own_settings(tiny_sweep, compose):
    from fer_exp.sweeps import eta
    from fer_exp.tracking import provenance

    tmp_path, _ = tiny_sweep
    store(tmp_path)  # the sweep's store, as the next sweep there would read it
    cpu = provenance.cpu_info()[0]
    for overrides, counted in (
        (["debug=tiny"], "2 run(s)"),
        (["debug=tiny", "batch_size=3"], "2 run(s) of other settings"),
    ):
        config = compose(["model=shallow", *overrides])
        jobs = eta.grid(["lr=1e-2,1e-1"], "shallow", 3, speed=eta.speed_params(config))
        minutes, source = eta.estimate(jobs, cpu, config.data.name)
        assert len(minutes) == 2 and all(m > 0 for m in minutes), source
        assert source.endswith(f"of data {config.data.name}: shallow: {counted}")


@slow
def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    p = run_cli(tmp_path, "-m", "model=shallow", "batch_size=8,0", "debug=tiny")
    assert p.returncode == 1
    assert "2 job(s), 1 not finished" in p.stdout
    client, runs = store(tmp_path)
    jobs = {r.info.run_name.split(",")[1]: r for r in runs if r.data.tags.get("fer_exp.role") == "job"}
    assert {k: r.info.status for k, r in jobs.items()} == {"batch_size=8": "FINISHED", "batch_size=0": "FAILED"}
    failed = jobs["batch_size=0"]
    assert (
        failed.data.tags["fer_exp.error"]
        == "ConfigError: batch_size=0 is not valid: expected a whole number >= 1, e.g. batch_size=64"
    )
    assert "Traceback" in mlflow.artifacts.load_text(f"runs:/{failed.info.run_id}/error.txt")
    assert [r.info.status for r in runs if r.data.tags.get("fer_exp.role") == "sweep"] == ["FAILED"]


def test_dirty_folder_trains_and_the_run_records_what_was_skipped(tmp_path, compose):
    from fer_exp.training.job import train

    root = dirty_folders(tmp_path / "fer")
    cfg = compose(
        [
            f"data.root={root}",
            "data.cache_dir=null",
            "model=shallow",
            "epochs=1",
            "batch_size=8",
            f"tracking.dir={tmp_path / 'mlruns'}",
        ]
    )
    result = train(cfg, run_name="dirty", output_dir=tmp_path / "out")
    client, runs = store(tmp_path)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["data_train_skipped"] == 3
    assert run.data.tags["fer_exp.kept_weights"] == "best epoch 1"
    assert run.data.metrics["data_train_images"] == 17
    assert run.data.metrics["data_train_to_gray"] == 2 and run.data.metrics["data_train_resized"] == 1
    text = mlflow.artifacts.load_text(f"runs:/{result['run_id']}/data/skipped_train.tsv")
    assert "corrupt.jpg\ttruncated or corrupt JPEG" in text
    assert "empty.jpg\tempty file" in text and "notes.jpg\tnot an image OpenCV can read" in text


def test_the_same_run_trains_from_a_csv(tmp_path, compose):
    from fer_exp.training.job import train

    written = write_folders(tmp_path / "fer", per_class=2)
    write_csv(tmp_path / "fer2013.csv", {"Training": written["train"], "PublicTest": written["validation"]})
    cfg = compose(
        [
            "data=fer2013_csv",
            f"data.path={tmp_path / 'fer2013.csv'}",
            "data.cache_dir=null",
            "model=shallow",
            "epochs=1",
            "batch_size=8",
            f"tracking.dir={tmp_path / 'mlruns'}",
        ]
    )
    result = train(cfg, output_dir=tmp_path / "out")
    run = MlflowClient().get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["data_train_images"] == 14
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"fer2013_csv-train", "fer2013_csv-validation"}


def test_without_shared_data_the_default_falls_back_to_synthetic(monkeypatch, caplog):
    from fer_exp.data import sources

    monkeypatch.setattr(sources, "DEFAULT_ROOT", sources.Path("/nonexistent/fer2013"))
    cfg = {
        "format": "folders",
        "root": None,
        "classes": ["happy", "sad"],
        "image_size": 48,
        "name": "fer2013",
        "register_as": "fer",
    }
    used = sources.with_fallback(cfg)
    assert used["register_as"] == "fer-synthetic"  # toy data never becomes the fer champion
    splits, source = sources.load_data(used)
    assert (
        source == "synthetic" and len(splits["train"]) == 2 * 300 and "using the built-in synthetic set" in caplog.text
    )
    with pytest.raises(sources.DataError, match="data root not found"):
        sources.load_data({**cfg, "root": "/nonexistent/fer2013"})  # an explicit root must exist
    # on a cluster worker: no fallback, an error that names the node
    monkeypatch.setenv(sources.REMOTE_ENV, "ray")
    assert sources.with_fallback(cfg) is cfg
    with pytest.raises(
        sources.DataError,
        match=f"(?s)nonexistent/fer2013 on {re.escape(socket.gethostname())}.*ray worker.*every node needs the data",
    ):
        sources.load_data(cfg)


@slow
def test_sigterm_ends_the_run_killed(tmp_path):
    cmd = [
        sys.executable,
        "-u",
        "-m",
        "fer_exp.run",
        "model=shallow",
        "debug=tiny",
        "epochs=20",
        "batch_size=8",
        f"tracking.dir={tmp_path / 'mlruns'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    p = subprocess.Popen(cmd, cwd=ROOT, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:
        if line.startswith("Epoch 2/"):
            p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=300) == 130
    _, runs = store(tmp_path)
    (run,) = runs
    assert run.info.status == "KILLED" and run.data.tags["fer_exp.stop_reason"] == "interrupted"
    assert run.data.tags["fer_exp.checkpoint_epoch"] == "1"


@slow
@pytest.mark.parametrize("bad", ["model=nonexistent", "model.name=vgg99"])
def test_bad_override_fails_clearly(tmp_path, bad):
    p = run_cli(tmp_path, bad, "debug=tiny", timeout=300)
    expected = (
        "nonexistent"
        if bad.startswith("model=")
        else "model.name='vgg99' is not valid: expected one of airbench, deep,"
    )
    assert p.returncode != 0 and expected in p.stdout + p.stderr, (p.stdout + p.stderr)[-3000:]
