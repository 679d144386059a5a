"""A sweep logging to a real MLflow tracking server (`make server`) on loopback, artifacts proxied."""

import os
import subprocess

import keras
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, TINY, free_port, make_command, run_cli, wait_http


# .ci/run starts Debian's PostgreSQL and sets this to an empty database
POSTGRES = os.environ.get("FER_EXP_TEST_POSTGRES")


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(not POSTGRES, reason="FER_EXP_TEST_POSTGRES not set"))])
def test_sweep_logs_through_a_tracking_server(tmp_path, backend):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = POSTGRES if backend == "postgresql" else f"sqlite:///{tmp_path / 'server.db'}"
    command = make_command("server", SERVER_DB=db, SERVER_ARTIFACTS=tmp_path / "served", SERVER_PORT=port)
    assert "--host 127.0.0.1" in command and "--serve-artifacts" in command
    server = subprocess.Popen(command, shell=True, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_http(f"{url}/health", server)
        p = run_cli(tmp_path, "-m", "model=shallow", "lr=1e-4,1e-3", "tracking=server", f"tracking.uri={url}", *TINY)
        assert p.returncode == 0, p.stderr[-3000:]
        client = MlflowClient(url)
        exp = client.get_experiment_by_name("fer_exp")
        assert exp.artifact_location.startswith("mlflow-artifacts:")  # uploads go through the server
        runs = client.search_runs([exp.experiment_id])
        parent = next(r for r in runs if r.data.tags.get("fer_exp.role") == "sweep")
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
        model = keras.models.load_model(client.download_artifacts(children[0].info.run_id, "model.h5", str(tmp_path)), compile=False)
        assert model.output_shape == (None, 7)
        assert client.get_model_version_by_alias("fer-synthetic", "champion").run_id in {r.info.run_id for r in children}
        assert list((tmp_path / "served").rglob("model.h5")) and not (tmp_path / "mlruns").exists()  # no local store
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
