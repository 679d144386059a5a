"""Using a sweep's results: compare, the model registry, serving over HTTP, the MLflow UI in a browser."""

import json
import os
import shutil
import subprocess
import sys
import urllib.request

import mlflow
import numpy as np
import pytest
from helpers.processes import free_port, make_command, wait_http
from helpers.runner import ROOT
from mlflow.tracking import MlflowClient

from fer_exp import compare, tracking
from fer_exp.models import load_model
from fer_exp.sweeps import results

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def sweep_store(tiny_sweep):
    """(tmp folder, client on the tiny sweep's store, parent run id, its child runs as records)."""
    tmp, p = tiny_sweep
    assert p.returncode == 0, p.stderr[-3000:]
    mlflow.set_tracking_uri(tracking.store_uris(tmp / "mlruns")[0])
    client = MlflowClient()
    exp = client.get_experiment_by_name("fer_exp")
    parent = client.search_runs([exp.experiment_id], "tags.`fer_exp.role` = 'sweep'")[0].info.run_id
    return tmp, client, parent, tracking.sweep_jobs(parent)


@pytest.mark.slow
def test_compare_prints_sorted_table_and_logs_png(sweep_store, tmp_path):
    tmp, client, parent, children = sweep_store
    assert "compare.png" in {a.path for a in client.list_artifacts(parent)}  # drawn when the sweep ended
    p = subprocess.run(
        [sys.executable, "-m", "fer_exp.compare", f"tracking.dir={tmp / 'mlruns'}", f"out_dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("#"))
    rows = lines[header + 1 : header + 5]
    assert lines[header].split()[:5] == ["#", "job", "status", "best_val_accuracy", "tta"]
    jobs = [r.split()[1] for r in rows]
    assert sorted(jobs) == sorted(
        ["model=deep,lr=0.0001", "model=deep,lr=0.001", "model=shallow,lr=0.0001", "model=shallow,lr=0.001"]
    )
    scores = [float(r.split()[3]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    expected = sorted((r["metrics"]["best_val_accuracy"] for r in children), reverse=True)
    assert scores == pytest.approx(expected, abs=1e-4)
    assert all(r.split()[2] == "FINISHED" for r in rows)
    assert (tmp_path / parent / "compare.png").stat().st_size > 10_000


def test_compare_shows_running_jobs_and_only_differing_overrides(tmp_path):
    exp = tracking.configure(None, tmp_path / "mlruns")
    client = MlflowClient()
    parent = client.create_run(exp, run_name="sweep now", tags={tracking.TAG_ROLE: "sweep"}).info.run_id
    done = client.create_run(
        exp, run_name="a", tags={"mlflow.parentRunId": parent, "fer_exp.overrides": "model=shallow lr=0.01 seed=1"}
    )
    client.log_metric(done.info.run_id, "best_val_accuracy", 0.30)
    client.set_terminated(done.info.run_id)
    running = client.create_run(
        exp, run_name="b", tags={"mlflow.parentRunId": parent, "fer_exp.overrides": "model=shallow lr=0.001 seed=1"}
    )
    for step, acc in enumerate([0.2, 0.5, 0.4]):
        client.log_metric(running.info.run_id, "val_accuracy", acc, step=step)
    rows = results.job_rows(tracking.sweep_jobs(parent, "val_accuracy"), "best_val_accuracy")
    assert [(r["label"], r["status"], r["value"], r["best_epoch"]) for r in rows] == [
        ("lr=0.001", "RUNNING", 0.5, "2/3"),
        ("lr=0.01", "FINISHED", 0.30, "-"),
    ]
    text, png, _ = compare.compare(tracking.get_record(parent), "best_val_accuracy", tmp_path / "out")
    assert "RUNNING" in text and png.exists()
    assert {"compare.png", "compare.txt"} <= {a.path for a in client.list_artifacts(parent)}


def test_compare_errors_are_clear(tmp_path):
    assert compare.main([f"tracking.dir={tmp_path / 'none'}"]) == 2
    exp = tracking.configure(None, tmp_path / "mlruns")
    run = MlflowClient().create_run(exp).info.run_id
    assert compare.main([f"tracking.dir={tmp_path / 'mlruns'}"]) == 2  # no sweep yet
    with pytest.raises(results.CompareError, match="not a sweep"):
        results.find_sweep("fer_exp", run)


@pytest.mark.slow
def test_best_model_is_registered_and_champion_moves_only_when_beaten(sweep_store):
    tmp, client, parent, children = sweep_store
    best = max(children, key=lambda r: r["metrics"]["best_val_accuracy"])
    champion = client.get_model_version_by_alias("fer-synthetic", "champion")
    assert champion.run_id == best["run_id"]
    worse = next(r for r in children if r["run_id"] != best["run_id"])  # no better than the best (ties stay)
    assert "stays" in tracking.register_champion(worse)
    assert client.get_model_version_by_alias("fer-synthetic", "champion").run_id == best["run_id"]
    client.log_metric(worse["run_id"], "best_val_accuracy", 1.0)  # now it beats the champion
    assert "is now models:/fer-synthetic@champion" in tracking.register_champion(tracking.get_record(worse["run_id"]))
    assert client.get_model_version_by_alias("fer-synthetic", "champion").run_id == worse["run_id"]
    assert len(client.search_model_versions("name = 'fer-synthetic'")) == 2  # no duplicate version for a run


@pytest.mark.slow
def test_champion_is_served_over_http(sweep_store):
    tmp, client, parent, children = sweep_store
    port = free_port()
    # what `make serve` runs (it puts the venv's bin on PATH, where the scoring server finds uvicorn)
    command = make_command("serve", STORE=tmp / "mlruns", MODEL="models:/fer-synthetic@champion", SERVE_PORT=port)
    assert "--host 127.0.0.1" in command
    server = subprocess.Popen(
        command,
        shell=True,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", server)
        faces = np.random.default_rng(0).random((2, 48, 48, 1), dtype=np.float32)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            json.dumps({"inputs": faces.tolist()}).encode(),
            {"Content-Type": "application/json"},
        )
        served = np.array(json.load(urllib.request.urlopen(request, timeout=60))["predictions"])
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
    model, classes = load_model("models:/fer-synthetic@champion", tracking.store_uris(tmp / "mlruns")[0])
    assert classes == ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]  # from the model's metadata
    local = np.asarray(model(faces))
    assert served.shape == (2, 7) and np.allclose(served.sum(axis=1), 1, atol=1e-4)
    # the sweep trained in bfloat16 where the CPU has it (precision=auto): two processes' bfloat16
    # kernels may round differently; another model would differ by far more
    np.testing.assert_allclose(served, local, atol=1e-3)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (.ci/run installs Debian's chromium)")
def test_mlflow_ui_compares_the_sweep_at_first_sight_in_a_real_browser(sweep_store):
    """The link the sweep prints opens the runs table with every job listed and its validation accuracy
    in a column, no click needed, and no run of another sweep; its chart view compares the jobs.
    Screenshots of both are saved."""
    playwright = pytest.importorskip("playwright.sync_api")
    tmp, client, parent, children = sweep_store
    port = free_port()
    # the command `make ui` runs (dry run: print it), pointed at the test's store
    command = make_command("ui", STORE=tmp / "mlruns", PORT=port, WORKERS=1)
    assert "--host 127.0.0.1" in command
    exp_id = client.get_run(parent).info.experiment_id
    assert f"{tracking.VIEW_TAG}{parent}" in client.get_experiment(exp_id).tags
    # the collapsed sweep row carries its best job's score (as the sweep ended: other tests change scores later)
    summary = client.get_run(parent).data
    assert (
        summary.metrics["best_val_accuracy"]
        == client.get_run(summary.tags["fer_exp.best_run"]).data.metrics["best_val_accuracy"]
    )
    url = tracking.view_link(exp_id, parent, f"http://127.0.0.1:{port}")
    # a second sweep in the same experiment (its parent and a job, as the runner tags them): not in this view
    other = client.create_run(exp_id, run_name="another sweep", tags={"fer_exp.role": "sweep"}).info.run_id
    client.set_tag(other, "fer_exp.sweep_id", other)
    stranger = "model=shallow,lr=0.5,seed=99"
    tags = {"mlflow.parentRunId": other, "fer_exp.sweep_id": other, "fer_exp.role": "job"}
    job = client.create_run(exp_id, run_name=stranger, tags=tags).info.run_id
    client.log_metric(job, "best_val_accuracy", 0.99)  # it would sort first
    for run_id in (job, other):
        client.set_terminated(run_id)
    server = subprocess.Popen(
        command,
        shell=True,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    shots = ROOT / "outputs" / "test-screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", server)
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url)
            for r in children:
                page.get_by_text(r["name"], exact=True).first.wait_for(timeout=60_000)
            page.get_by_role("columnheader", name="best_val_accuracy").first.wait_for(timeout=30_000)
            for r in (
                children
            ):  # each job's row shows its validation accuracy (the grid splits a row: pinned name, the rest)
                index = page.locator("[role=row]", has_text=r["name"]).first.get_attribute("row-index")
                shown = " ".join(page.locator(f'[role=row][row-index="{index}"]').all_inner_texts())
                value = repr(r["metrics"]["best_val_accuracy"]).removesuffix(
                    ".0"
                )  # as JavaScript prints it: 1, 0.2142857...
                assert value in shown.split(), (r["name"], value, shown)
            assert page.get_by_text(stranger).count() == 0 and page.get_by_text("another sweep").count() == 0
            page.screenshot(path=str(shots / "mlflow-ui-sweep.png"))
            page.goto(url + "&compareRunsMode=CHART")
            page.get_by_text("Model metrics").first.wait_for(timeout=60_000)
            chart = page.get_by_text("best_val_accuracy", exact=True).first
            chart.wait_for(timeout=30_000)
            page.screenshot(path=str(shots / "mlflow-ui-sweep-charts.png"))
            browser.close()
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
        for run_id in (job, other):  # the store is the session's: its other readers see one sweep
            client.delete_run(run_id)
    assert (shots / "mlflow-ui-sweep.png").stat().st_size > 20_000 and (
        shots / "mlflow-ui-sweep-charts.png"
    ).stat().st_size > 20_000


def test_overrides_come_from_the_tag_or_the_run_name():
    def job(tag=None, name="defaults"):
        return {"name": name, "tags": {tracking.TAG_OVERRIDES: tag} if tag else {}}

    spaced = ["data.root=/data/my faces", "model.filters=[8, 16]", "+extra=1", "~seed"]
    assert tracking.decode_overrides(tracking.encode_overrides(spaced)) == spaced
    assert results.job_overrides(job(tracking.encode_overrides(spaced))) == {
        "data.root": "/data/my faces",
        "model.filters": "[8, 16]",
        "extra": "1",
        "seed": "",
    }
    escaped = tracking.encode_overrides(["data.root=/data/my\\ faces", "lr=1e-3"])  # a sweep's job: Hydra escapes
    assert results.job_overrides(job(escaped)) == {"data.root": "/data/my faces", "lr": "1e-3"}
    assert results.job_overrides(job("model=deep lr=0.001")) == {"model": "deep", "lr": "0.001"}  # an older run's tag
    assert results.job_overrides(job(name="model=deep,lr=0.001,model.filters=[8,16]")) == {
        "model": "deep",
        "lr": "0.001",
        "model.filters": "[8,16]",
    }


def test_the_cost_front_is_the_runs_no_other_beats_for_less():
    points = [(0.60, 10.0), (0.50, 5.0), (0.55, 20.0), (None, 1.0), (0.60, 12.0), (0.70, None)]
    assert results.pareto_front(points, "best_val_accuracy") == [True, True, False, False, False, False]
    losses = [(0.9, 10.0), (1.2, 5.0), (1.0, 20.0)]
    assert results.pareto_front(losses, "val_loss") == [True, True, False]
    job = {"metrics": {"train_seconds": 90.0, "train_gflop_per_image": 0.5, "data_train_images": 1000, "epochs_run": 4}}
    assert results.training_cost(job) == (1.5, 0.5 * 1000 * 4 / 1e6)
    assert results.training_cost({"metrics": {}}) == (None, None)
