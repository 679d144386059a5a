"""Sweeps through hydra/launcher=ray on a cluster on this machine: a Ray head and a worker
node (`ray start`, separate processes), logging to a real tracking server (`make server`:
PostgreSQL where .ci/run sets FER_EXP_TEST_POSTGRES, else SQLite, artifacts proxied),
checked over HTTP; then the worker node is killed mid-sweep."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest
from helpers.processes import free_port, make_command, start, stop, wait_http
from helpers.runner import ROOT, cli, run_cli, user_env
from mlflow.tracking import MlflowClient

pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="the cluster extra is not installed")
pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
# Notice a dead node in ~2 s instead of Ray's default ~30 s
FAST_HEALTH_CHECK = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}


def wait_started(node: subprocess.Popen, log: Path, until: str = "Ray runtime started", timeout: float = 120):
    """Wait for `ray start --block` to report its node up (it then blocks): the match of `until` in its log."""
    deadline = time.time() + timeout
    while not (found := re.search(until, log.read_text())):
        assert node.poll() is None and time.time() < deadline, f"the Ray node did not start: {log.read_text()[-2000:]}"
        time.sleep(0.5)
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(tracking server URL, Ray address, worker node process, folder); all stopped at the end."""
    tmp = tmp_path_factory.mktemp("cluster")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = os.environ.get("FER_EXP_TEST_POSTGRES") or f"sqlite:///{tmp / 'server.db'}"
    command = make_command("server", SERVER_DB=db, SERVER_ARTIFACTS=tmp / "served", SERVER_PORT=port, WORKERS=2)
    assert "--host 127.0.0.1" in command and "--serve-artifacts" in command
    server, nodes = start(command, tmp / "server.log", shell=True), []
    try:
        node = [RAY, "start", "--block", "--num-cpus=1", "--object-store-memory=200000000", "--disable-usage-stats"]
        # started elsewhere than the driver: jobs move to the driver's folder (a git checkout) themselves
        nodes.append(
            start(
                [
                    *node,
                    "--head",
                    "--port=0",  # the GCS binds a free port itself: a port picked here beforehand can be taken meanwhile
                    "--include-dashboard=false",
                    f"--ray-client-server-port={free_port()}",
                ],
                tmp / "head.log",
                FAST_HEALTH_CHECK,
                cwd=tmp,
            )
        )
        # the head's address as it prints it for other nodes: this machine's own, not 127.0.0.1; still one machine
        address = wait_started(nodes[0], tmp / "head.log", r"ray start --address='([^']+)'")[1]
        nodes.append(start([*node, f"--address={address}"], tmp / "worker.log", cwd=tmp))
        wait_started(nodes[1], tmp / "worker.log")
        wait_http(f"{url}/health", server)
        yield url, address, nodes[1], tmp
    finally:
        for n in nodes:
            stop(n, signal.SIGKILL)  # the node's whole process group; `ray start --block` takes ~30 s on SIGTERM
        stop(server)


def sweep_runs(client, sweep_dir: Path):
    """(parent, children) of the sweep that wrote to sweep_dir."""
    exp = client.get_experiment_by_name("fer_exp")
    (parent,) = client.search_runs([exp.experiment_id], f"tags.`fer_exp.sweep_dir` = '{sweep_dir}'")
    return parent, client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


def test_a_sweep_runs_on_both_nodes_and_logs_through_the_server(cluster):
    url, address, _, tmp = cluster
    p = run_cli(
        tmp / "first",
        "-m",
        "hydra/launcher=ray",
        f"hydra.launcher.ray.init.address={address}",
        "model=deep,shallow",
        "lr=1e-4,1e-3",
        "tracking=server",
        f"tracking.uri={url}",
        "debug=tiny",
    )
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert "4 job(s), 0 not finished" in p.stdout
    client = MlflowClient(url)
    parent, children = sweep_runs(client, tmp / "first" / "sweep")
    assert parent.info.status == "FINISHED" and len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}
    assert len({r.data.tags["fer_exp.ray_node"] for r in children}) == 2  # the head and the worker node both ran jobs
    assert all("mlflow.source.git.commit" in r.data.tags for r in children)  # ran in the driver's checkout
    model = keras.models.load_model(
        client.download_artifacts(children[0].info.run_id, "model.h5", str(tmp)), compile=False
    )
    assert model.output_shape == (None, 7)
    assert client.get_experiment_by_name("fer_exp").artifact_location.startswith(
        "mlflow-artifacts:"
    )  # uploads go through the server
    assert list((tmp / "served").rglob("model.h5")) and not (tmp / "first" / "mlruns").exists()  # no local store
    assert client.get_model_version_by_alias("fer-synthetic", "champion").run_id in {r.info.run_id for r in children}


def test_a_killed_worker_node_fails_its_job_only_and_resume_continues_just_that(cluster):
    url, address, worker, tmp = cluster
    args = [
        "-m",
        "hydra/launcher=ray",
        f"hydra.launcher.ray.init.address={address}",
        "model=shallow",
        "lr=1e-4,1e-3",
        "tracking=server",
        f"tracking.uri={url}",
        "debug=tiny",
        "epochs=20",
        "early_stopping.patience=0",
        "batch_size=8",
    ]
    client = MlflowClient(url)
    exp = client.get_experiment_by_name("fer_exp")
    sweep = subprocess.Popen(
        cli(tmp / "second", *args),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=user_env(),
    )
    deadline = time.time() + 180
    running = "attributes.status = 'RUNNING' and tags.`fer_exp.role` = 'job' and tags.`fer_exp.checkpoint_epoch` != ''"
    while len(client.search_runs([exp.experiment_id], running)) < 2:  # one on each node, each past its first epoch
        assert time.time() < deadline and sweep.poll() is None, "the two jobs did not both complete an epoch"
        time.sleep(0.5)
    stop(worker, signal.SIGKILL)
    out = sweep.communicate(timeout=300)[0]
    assert sweep.returncode == 1, out[-3000:]  # a sweep with a failed job exits 1
    assert "was lost on the Ray cluster" in out and "2 job(s), 1 not finished" in out
    parent, children = sweep_runs(client, tmp / "second" / "sweep")
    lost, done = sorted(children, key=lambda r: r.info.status)
    assert parent.info.status == "FAILED" and (lost.info.status, done.info.status) == ("FAILED", "FINISHED")
    assert (
        lost.data.tags["fer_exp.error"].startswith("lost:")
        and lost.data.tags["fer_exp.ray_node"] != done.data.tags["fer_exp.ray_node"]
    )
    assert f"FAILED: {lost.info.run_name}: lost:" in out  # the summary names it

    p = run_cli(tmp / "third", *args, "resume=true")  # only the head is left
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert (
        "1 job(s), 0 not finished" in p.stdout and f"already FINISHED earlier, reused: {done.info.run_id}" in p.stdout
    )
    _, (rerun,) = sweep_runs(client, tmp / "third" / "sweep")
    assert (
        rerun.info.status == "FINISHED" and rerun.data.tags["fer_exp.resumed_from"] == lost.info.run_id
    )  # from its last checkpoint
