"""A team's tracking server (`make server`) that goes away and comes back, or never does, and
one that lets in only its users (AUTH=1). Real servers on free loopback ports, on PostgreSQL
where .ci/run sets FER_EXP_TEST_POSTGRES, else SQLite; the outbox itself on fakes."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from helpers.processes import free_port, start, stop, wait_http
from helpers.runner import ROOT, cli, run_cli, user_env

from fer_exp.tracking.outbox import CALLS, RUN, START, Outbox, read_calls, unpack

# --- the outbox, on a fake server -------------------------------------------------------


class FakeServer:
    def __init__(self):
        self.up, self.received = True, []

    def send(self, name, kwargs):
        if not self.up:
            raise ConnectionError("refused")
        if name == "bad":
            raise ValueError("a real error")
        if "paths" in kwargs:  # what the server would store: the files as they are when sent
            kwargs = {**kwargs, "contents": [p.read_text() for p in kwargs["paths"]]}
        self.received.append((name, kwargs))


def test_calls_wait_on_disk_in_order_while_the_server_is_away_and_go_when_it_answers(tmp_path):
    server = FakeServer()
    box = Outbox(
        tmp_path / "spool" / "run1", {"run_id": "run1"}, server.send, lambda: server.up, limit_s=600, probe_every_s=0
    )
    box.deliver("log_metrics", metrics={"loss": 1.0}, step=0)
    assert server.received == [("log_metrics", {"metrics": {"loss": 1.0}, "step": 0})] and not box.folder.exists()

    server.up = False
    checkpoint = tmp_path / "last.keras"
    checkpoint.write_text("epoch 2")
    box.deliver("log_metrics", metrics={"loss": 0.5}, step=1)
    box.deliver("log_files", paths=[checkpoint], folder="checkpoint")
    checkpoint.write_text("epoch 3")  # the next epoch overwrites it; the queued call keeps epoch 2's
    box.deliver("set_tags", tags={"a": "b"})
    assert len(server.received) == 1 and box.queued == 3
    assert [c[0] for c in read_calls(box.folder)] == ["log_metrics", "log_files", "set_tags"]
    assert (box.folder / "files").rglob("last.keras").__next__().read_text() == "epoch 2"
    box.deliver(
        "log_files", paths=[checkpoint], folder="checkpoint"
    )  # epoch 3's replaces epoch 2's, which was not sent
    assert [c[0] for c in read_calls(box.folder)] == ["log_metrics", "set_tags", "log_files"]
    assert [p.read_text() for p in (box.folder / "files").rglob("last.keras")] == ["epoch 3"]
    assert (
        json.loads((box.folder / RUN).read_text()) == {"run_id": "run1"}
        and len((box.folder / CALLS).read_text().splitlines()) == 3
    )

    server.up = True
    assert box.flush() and not box.folder.exists()
    assert [name for name, _ in server.received] == ["log_metrics", "log_metrics", "set_tags", "log_files"]
    _, files = server.received[3]
    assert (
        files["contents"] == ["epoch 3"] and files["paths"][0].name == "last.keras" and files["folder"] == "checkpoint"
    )


def test_a_server_away_past_the_limit_leaves_a_spool_that_reads_back(tmp_path):
    import numpy as np

    server = FakeServer()
    server.up = False
    box = Outbox(tmp_path / "run1", {"run_id": "run1"}, server.send, lambda: server.up, limit_s=0.2, probe_every_s=0)
    box.deliver("log_keras_like", example=np.arange(3.0), metadata={"classes": ["a", "b"]})
    box.deliver("end_run", status="FINISHED")
    time.sleep(0.3)
    assert not box.close() and box.gave_up()
    server.up = True
    assert not box.flush()  # past the limit the job no longer tries; fer_exp.sync does
    (first, packed, _), (last, end, _) = read_calls(box.folder)
    kwargs = unpack(packed, box.folder)
    assert (
        first == "log_keras_like"
        and kwargs["example"].tolist() == [0.0, 1.0, 2.0]
        and kwargs["metadata"] == {"classes": ["a", "b"]}
    )
    assert (last, unpack(end, box.folder)) == ("end_run", {"status": "FINISHED"})


def test_a_run_begun_while_the_server_is_away_is_created_first_when_it_answers(tmp_path):
    server = FakeServer()
    server.up = False
    created = []
    server_send = server.send

    def send(name, kwargs):
        server_send(name, kwargs)
        if name == START:
            created.append("run-on-server")
            return "run-on-server"

    box = Outbox(tmp_path / "offline-1", {"run_id": "offline-1", "pending": True}, send, lambda: server.up, limit_s=600,
                 probe_every_s=0)  # fmt: skip
    box.start_down(START, run_name="job", experiment="fer_exp", parent_run_id=None, tags={})
    box.deliver("log_metrics", metrics={"loss": 1.0}, step=0)  # not tried: queued behind the creation
    assert not server.received and [c[0] for c in read_calls(box.folder)] == [START, "log_metrics"]
    server.up = True
    box.deliver("set_tags", tags={"a": "b"})
    assert [name for name, _ in server.received] == [START, "log_metrics", "set_tags"] and created == ["run-on-server"]
    assert box.run == {"run_id": "run-on-server", "pending": False} and not box.folder.exists()


def test_an_error_from_a_server_that_answers_is_raised_not_queued(tmp_path):
    server = FakeServer()
    box = Outbox(tmp_path / "run1", {}, server.send, lambda: server.up, limit_s=600)
    with pytest.raises(ValueError, match="a real error"):
        box.deliver("bad")
    assert not box.queued and not box.folder.exists()


# --- real servers -------------------------------------------------------------------------


class Server:
    """`make server` on a free loopback port, to be stopped and started again on the same database."""

    def __init__(self, tmp: Path, **make_vars):
        self.tmp, self.port = tmp, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        db = os.environ.get("FER_EXP_TEST_POSTGRES") or f"sqlite:///{tmp / 'server.db'}"
        # one uvicorn worker: a test has one client, and every worker imports MLflow
        self.vars = {
            "SERVER_DB": db,
            "SERVER_ARTIFACTS": tmp / "served",
            "SERVER_PORT": self.port,
            "WORKERS": 1,
            **make_vars,
        }
        self.env, self.proc, self.starts = {}, None, 0

    def start(self, env=None):
        self.starts += 1
        command = ["make", "-s", "server", *(f"{k}={v}" for k, v in self.vars.items())]
        self.proc = start(command, self.tmp / f"server{self.starts}.log", env=env or self.env)
        wait_http(f"{self.url}/health", self.proc)
        return self

    def stop(self):
        stop(self.proc, signal.SIGKILL)  # as in a crash (and at once: a graceful stop takes ~15 s)

    def up(self):
        """Started again if it is not running (a test before stopped it and failed)."""
        return self if self.proc and self.proc.poll() is None else self.start()


@pytest.fixture
def servers():
    """new(tmp, **make_vars) -> a Server; every one is stopped at the end."""
    made = []
    yield lambda *a, **kw: made.append(Server(*a, **kw)) or made[-1]
    for server in made:
        if server.proc:
            server.stop()


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    """One `make server` shared by the outage tests: each stops it and starts it again on the same
    database (runs are told apart by their sweep folder or id), and leaves it running."""
    server = Server(tmp_path_factory.mktemp("team_server")).start()
    yield server
    server.stop()


def server_runs(url: str, experiment: str = "fer_exp", query: str = ""):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], query, max_results=100) if exp else []


def wait_for_epoch(url: str, epoch: int, job_filter: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until a job run matching job_filter has checkpointed `epoch` epochs on the server."""
    deadline = time.time() + timeout
    while True:
        _, runs = server_runs(url, query=f"tags.`fer_exp.checkpoint_epoch` = '{epoch}' and {job_filter}")
        if runs:
            return
        assert time.time() < deadline and proc.poll() is None, "the job did not checkpoint its epoch"
        time.sleep(0.3)


@pytest.mark.slow
def test_a_sweep_trains_through_a_server_restart_and_loses_nothing(tmp_path, team_server):
    """The server is stopped for ~12 s (past a job's two retries, a second apart) during the first job's
    second epoch and started again on the same database: both jobs end FINISHED with every epoch's
    metrics and their model on the server."""
    import mlflow

    server = team_server.up()
    # data.register_as=null: leave the registry of a shared test database (CI's PostgreSQL) to the cluster test
    args = [
        "-m",
        "model=shallow",
        "lr=1e-4,1e-3",
        "debug=small",
        "epochs=8",
        "data.register_as=null",
        "tracking=server",
        f"tracking.uri={server.url}",
    ]
    sweep = subprocess.Popen(
        cli(tmp_path, *args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=user_env()
    )
    try:
        wait_for_epoch(server.url, 1, "attributes.status = 'RUNNING'", sweep)
        down = time.time()
        server.stop()
        time.sleep(max(0.0, 12 - (time.time() - down)))
        up = time.time()
        server.start()
        out = sweep.communicate(timeout=600)[0]
    finally:
        sweep.kill()
    assert sweep.returncode == 0, out[-4000:]
    assert (
        "2 job(s), 0 not finished" in out
        and "does not answer; training goes on" in out
        and "the tracking server answers again" in out
    )
    client, runs = server_runs(server.url, query=f"tags.`fer_exp.sweep_dir` = '{tmp_path / 'sweep'}'")
    (parent,) = runs
    _, children = server_runs(server.url, query=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert parent.info.status == "FINISHED" and [r.info.status for r in children] == ["FINISHED"] * 2
    mlflow.set_tracking_uri(server.url)
    during = []
    for run in children:
        rid = run.info.run_id
        for metric in ("val_accuracy", "loss", "lr"):
            assert sorted(m.step for m in client.get_metric_history(rid, metric)) == list(range(8)), (
                run.info.run_name,
                metric,
            )
        assert run.data.tags["fer_exp.checkpoint_epoch"] == "8" and "best_val_accuracy" in run.data.metrics
        assert mlflow.models.get_model_info(f"runs:/{rid}/model").metadata["classes"]  # the MLflow model
        assert {f.path for f in client.list_artifacts(rid)} >= {"model.h5", "checkpoint", "curves.png"}
        during += [m for m in client.get_metric_history(rid, "loss") if down * 1000 < m.timestamp < up * 1000]
    assert during, f"no epoch ended while the server was away ({down:.1f}-{up:.1f}): the job did not train on"
    assert not list((tmp_path / "mlruns" / "spool").glob("*"))  # everything was sent

    again = run_cli(tmp_path, *args, "resume=true")  # resume after the outage: both FINISHED runs are found
    assert again.returncode == 0 and "2 job(s) already FINISHED earlier, reused" in again.stdout, (
        again.stdout + again.stderr
    )[-3000:]


@pytest.mark.slow
def test_a_server_that_never_comes_back_leaves_a_spool_that_sync_uploads(tmp_path, team_server, capsys):
    import keras
    import mlflow

    server = team_server.up()
    spool = tmp_path / "spool"
    args = [
        "debug=small",
        "epochs=4",
        "tracking=server",
        f"tracking.uri={server.url}",
        "tracking.outage_minutes=0.1",
        f"tracking.spool_dir={spool}",
    ]
    job = subprocess.Popen(
        cli(tmp_path, *args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=user_env()
    )
    try:
        wait_for_epoch(server.url, 1, "attributes.status = 'RUNNING'", job)
        server.stop()
        out = job.communicate(timeout=600)[0]
    finally:
        job.kill()
    assert job.returncode == 0, out[-4000:]  # training finished; nothing is lost
    (folder,) = [p for p in spool.iterdir() if (p / RUN).exists()]
    assert f"is kept in {folder}" in out and f"python -m fer_exp.sync spool={spool}" in out
    assert list(folder.rglob("model.keras")) and list(folder.rglob("last.keras"))  # the model and the checkpoint

    server.start()  # a server is up again, on the same database
    from fer_exp import sync  # in-process: it only talks to the server

    capsys.readouterr()
    assert sync.main([f"spool={spool}"]) == 0
    assert f"uploaded run {folder.name}" in capsys.readouterr().out
    assert not folder.exists()
    client = mlflow.tracking.MlflowClient(server.url)
    run = client.get_run(folder.name)
    assert (
        run.info.status == "FINISHED"
        and run.data.tags["fer_exp.stop_reason"] == "epochs"
        and "best_val_accuracy" in run.data.metrics
    )
    assert sorted(m.step for m in client.get_metric_history(folder.name, "val_accuracy")) == [0, 1, 2, 3]
    assert run.data.tags["fer_exp.checkpoint_epoch"] == "4" and run.data.tags["fer_exp.kept_weights"].startswith(
        "best epoch"
    )
    mlflow.set_tracking_uri(server.url)
    assert mlflow.models.get_model_info(f"runs:/{folder.name}/model").metadata["classes"]
    model = keras.models.load_model(client.download_artifacts(folder.name, "model.h5", str(tmp_path)), compile=False)
    assert model.output_shape == (None, 7)


@pytest.mark.slow
def test_with_auth_only_users_get_in_and_a_wrong_password_fails_before_training(tmp_path, servers, capsys):
    admin = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(16)}
    server = servers(
        tmp_path, AUTH=1, SERVER_AUTH_DB=f"sqlite:///{tmp_path / 'auth.db'}", SERVER_AUTH_INI=tmp_path / "auth.ini"
    )
    server.start(
        env={"MLFLOW_AUTH_ADMIN_PASSWORD": admin["MLFLOW_TRACKING_PASSWORD"]}
    )  # from the environment, not the command line
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
        assert refused.value.code == 401

        from mlflow.server import get_app_client

        users = {"fer": secrets.token_urlsafe(16), "viewer": secrets.token_urlsafe(16)}
        os.environ.update(admin)
        try:
            auth = get_app_client("basic-auth", tracking_uri=server.url)
            for name, password in users.items():
                auth.create_user(
                    name, password
                )  # default_permission READ: a user may read all, write only what it made
        finally:
            for k in admin:
                os.environ.pop(k)

        experiment = f"auth-{uuid.uuid4().hex[:8]}"
        args = [
            "-m",
            "model=shallow",
            "lr=1e-3",
            "debug=tiny",
            "data.register_as=null",
            "tracking=server",
            f"tracking.uri={server.url}",
            f"tracking.experiment={experiment}",
        ]
        creds = {"MLFLOW_TRACKING_USERNAME": "fer", "MLFLOW_TRACKING_PASSWORD": users["fer"]}
        ok = subprocess.run(
            cli(tmp_path / "ok", *args),
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**user_env(), **creds},
            timeout=900,
        )
        assert ok.returncode == 0 and "1 job(s), 0 not finished" in ok.stdout, (ok.stdout + ok.stderr)[-3000:]

        wrong = subprocess.run(
            cli(tmp_path / "wrong", *args),
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**user_env(), **creds, "MLFLOW_TRACKING_PASSWORD": "not-it"},
            timeout=900,
        )
        text = wrong.stdout + wrong.stderr
        assert wrong.returncode != 0 and "refused user 'fer': check MLFLOW_TRACKING_PASSWORD" in text, text[-3000:]
        assert "Epoch 1" not in text and "Traceback" not in text

        # a user who may only read fer's experiment: one line saying what to ask for, no traceback
        viewer = {"MLFLOW_TRACKING_USERNAME": "viewer", "MLFLOW_TRACKING_PASSWORD": users["viewer"]}
        read_only = subprocess.run(
            cli(tmp_path / "viewer", *args),
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**user_env(), **viewer},
            timeout=900,
        )
        text = read_only.stdout + read_only.stderr
        assert read_only.returncode == 2 and "lets user 'viewer' read the experiment but not write to it" in text, text[
            -3000:
        ]
        assert "ask its admin for EDIT permission" in text and "Epoch 1" not in text and "Traceback" not in text
        assert text.count("lets user 'viewer'") == 1  # one line, at the sweep's start (its parent run)
        from fer_exp import compare  # in-process, with no credentials in the environment

        capsys.readouterr()
        assert compare.main([f"tracking_uri={server.url}", f"tracking.experiment={experiment}"]) == 2
        assert "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in capsys.readouterr().err

        os.environ.update({"MLFLOW_TRACKING_USERNAME": "viewer", "MLFLOW_TRACKING_PASSWORD": users["viewer"]})
        client, runs = server_runs(server.url, experiment)
        assert len(runs) == 2  # the sweep's parent and its job: the viewer reads them; the wrong password added none
        with pytest.raises(Exception, match="403|PERMISSION_DENIED"):
            client.set_tag(runs[0].info.run_id, "viewer", "was here")  # and cannot change them
    finally:
        for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(k, None)


@pytest.mark.slow
def test_a_job_started_while_the_server_is_away_trains_on_the_spool_and_sync_creates_its_run(
    tmp_path, team_server, capsys
):
    """The server is down before the job starts: the job says so once, within seconds, trains, and
    leaves its run (not yet created) in a spool; once the server is up, sync creates the run on it."""
    import mlflow

    server = team_server.up()
    server.stop()
    spool, experiment = tmp_path / "spool", f"offline-{uuid.uuid4().hex[:8]}"
    args = ["debug=tiny", "epochs=2", "tracking=server", f"tracking.uri={server.url}", f"tracking.experiment={experiment}",
            "tracking.outage_minutes=0.1", f"tracking.spool_dir={spool}"]  # fmt: skip
    started, said_at, lines = time.monotonic(), None, []
    job = subprocess.Popen(cli(tmp_path, *args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**user_env(), "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        for line in job.stdout:  # as they come, unbuffered: when the job says it starts
            lines.append(line)
            if said_at is None and "starts anyway" in line:
                said_at = time.monotonic() - started
        job.wait(timeout=600)
    finally:
        job.kill()
        server.start()  # the same database: the next test finds it up
    out = "".join(lines)
    assert job.returncode == 0 and "Traceback" not in out, out[-4000:]
    assert said_at is not None and said_at < 30, (said_at, out[-3000:])
    assert out.count(f"the tracking server {server.url} does not answer") == 1, out[-3000:]
    (folder,) = [p for p in spool.iterdir() if (p / RUN).exists()]
    assert json.loads((folder / RUN).read_text())["pending"] and f"python -m fer_exp.sync spool={spool}" in out

    from fer_exp import sync

    capsys.readouterr()
    assert sync.main([f"spool={spool}"]) == 0
    said = capsys.readouterr().out
    client, (run,) = server_runs(server.url, experiment)
    assert f"uploaded run {run.info.run_id}" in said and not folder.exists()
    assert run.info.status == "FINISHED" and "epochs=2" in run.info.run_name and "best_val_accuracy" in run.data.metrics
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")) == [0, 1]
    mlflow.set_tracking_uri(server.url)
    assert mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model").metadata["classes"]
