"""Sweeps that survive and replay: NaN, budgets, interrupts and resume, determinism,
parallel jobs and Optuna, each run for real on tiny synthetic data."""

import math
import signal
import subprocess
import sys

import mlflow
import pytest
from helpers.runner import CONF, ROOT, jobs, run_cli, store, user_env

slow = pytest.mark.slow


@slow
def test_nan_loss_fails_the_job_at_once_with_the_reason(tmp_path):
    p = run_cli(tmp_path, "optimizer=sgd", "lr=1e30", "model=shallow", "debug=tiny", "epochs=3", "batch_size=8")
    assert p.returncode != 0
    _, runs = store(tmp_path)
    (run,) = jobs(runs)
    assert run.info.status == "FAILED"
    assert run.data.tags["fer_exp.error"].startswith("RuntimeError: NaN or Inf loss encountered at batch")  # Keras
    assert "loss" not in run.data.metrics or len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")) == 0


@slow
def test_fail_fast_ends_the_sweep_at_the_first_failed_job(tmp_path):
    p = run_cli(tmp_path, "-m", "optimizer=sgd", "lr=1e30,1e-3,1e-2", "model=shallow", "debug=tiny", "fail_fast=true")
    assert p.returncode == 1
    assert (
        "fail_fast=true: job optimizer=sgd,lr=1e+30,model=shallow,debug=tiny failed, so the sweep ends here"
        in p.stdout + p.stderr
    )
    _, runs = store(tmp_path)
    (job,) = jobs(runs)  # the other two never started
    (parent,) = [r for r in runs if r.data.tags.get("fer_exp.role") == "sweep"]
    assert job.info.status == "FAILED" and parent.info.status == "FAILED"


def test_two_sweeps_started_in_the_same_second_get_folders_of_their_own():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        first, second = (compose("config", return_hydra_config=True).hydra.sweep.dir for _ in range(2))
    assert first != second and len(first.rsplit(".", 1)[1]) == 6  # to the microsecond


def test_max_minutes_stops_after_the_epoch_in_progress(tmp_path, compose):
    from fer_exp.training.job import train

    cfg = compose(
        [
            "model=shallow",
            "debug=tiny",
            "epochs=5",
            "batch_size=8",
            "max_minutes=0.0001",
            f"tracking.dir={tmp_path / 'mlruns'}",
        ]
    )
    result = train(cfg, output_dir=tmp_path / "out")
    run = mlflow.MlflowClient().get_run(result["run_id"])
    assert run.info.status == "FINISHED" and result["epochs"] == 1
    assert run.data.tags["fer_exp.stop_reason"] == "max_minutes"


def test_same_seed_gives_identical_metric_histories(tmp_path, compose):
    from fer_exp.training.job import train

    cfg = compose(
        [
            "model=shallow",
            "data=synthetic",
            "data.train_per_class=10",
            "data.val_per_class=3",
            "epochs=2",
            "batch_size=16",
            f"tracking.dir={tmp_path / 'mlruns'}",
        ]
    )
    assert cfg.augment.rotation > 0  # augmentation on: its randomness is seeded too
    histories = []
    for _ in range(2):
        run_id = train(cfg, output_dir=tmp_path / "out")["run_id"]
        client = mlflow.MlflowClient()  # after train() has pointed MLflow at the store
        histories.append(
            {
                k: [m.value for m in client.get_metric_history(run_id, k)]
                for k in ("loss", "accuracy", "val_loss", "val_accuracy")
            }
        )
    assert histories[0] == histories[1] and len(histories[0]["loss"]) == 2
    cfg.seed = 7
    other = train(cfg, output_dir=tmp_path / "out")["run_id"]
    assert [m.value for m in client.get_metric_history(other, "loss")] != histories[0]["loss"]


@slow
def test_interrupted_sweep_resumes_without_retraining(tmp_path):
    args = [
        "-m",
        "model=shallow",
        "lr=1e-4,1e-3",
        "optimizer=adamw",  # weight_decay=0.0, the default
        "lr_schedule=cosine",
        "data=synthetic",
        "data.train_per_class=20",
        "data.val_per_class=5",
        "epochs=4",
        "batch_size=16",
    ]
    cmd = [
        sys.executable,
        "-u",
        "-m",
        "fer_exp.run",
        *args,
        f"tracking.dir={tmp_path / 'mlruns'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    # A shell's background jobs inherit SIGINT ignored (so would Python in the child): restore it.
    p = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    second_job = False
    for line in p.stdout:
        second_job = second_job or "#1 :" in line
        if second_job and line.startswith("Epoch 2/"):  # epoch 1 of job #1 is checkpointed
            p.send_signal(signal.SIGINT)
    assert p.wait(timeout=300) == 130
    client, runs = store(tmp_path)
    killed = [r for r in jobs(runs) if r.info.status == "KILLED"]
    assert len(killed) == 1 and killed[0].data.tags["fer_exp.stop_reason"] == "interrupted"
    assert [r.info.status for r in runs if r.data.tags.get("fer_exp.role") == "sweep"] == ["KILLED"]

    again = run_cli(tmp_path, *args, "resume=true")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "1 job(s) already FINISHED earlier, reused" in again.stdout
    _, runs = store(tmp_path)
    by_lr = {}
    for r in jobs(runs):
        by_lr.setdefault(r.data.params["lr"], []).append(r)
    assert sorted(r.info.status for r in by_lr["0.0001"]) == ["FINISHED"]  # not retrained
    assert sorted(r.info.status for r in by_lr["0.001"]) == ["FINISHED", "KILLED"]
    cont = next(r for r in by_lr["0.001"] if r.info.status == "FINISHED")
    assert cont.data.tags["fer_exp.resumed_from"] == killed[0].info.run_id
    assert [m.step for m in client.get_metric_history(cont.info.run_id, "loss")] == [1, 2, 3]  # epochs 2..4
    assert cont.data.metrics["epochs_run"] == 4
    # The optimizer (AdamW, not Keras's default RMSprop) and its step count continue: the cosine schedule of
    # 4 epochs goes on from the end of epoch 1 to 0 (a fresh step count would restart it from 1e-3 x 0.85).
    lrs = [m.value for m in client.get_metric_history(cont.info.run_id, "lr")]
    assert lrs == pytest.approx([1e-3 * (1 + math.cos(math.pi * k / 4)) / 2 for k in (2, 3, 4)], rel=1e-3, abs=1e-7)


@slow
def test_parallel_joblib_sweep_lands_every_run_under_one_parent(tmp_path):
    p = run_cli(
        tmp_path,
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "model=deep,shallow",
        "lr=1e-4,1e-3",
        "debug=tiny",
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "database is locked" not in p.stdout + p.stderr
    _, runs = store(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("fer_exp.role") == "sweep"]
    children = jobs(runs)
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert len({(r.data.params["model.name"], r.data.params["lr"]) for r in children}) == 4


@slow
def test_submitit_sweep_lands_every_run_under_one_parent(tmp_path):
    """hydra/launcher=submitit_local: the job code of the SLURM launcher (slurm.yaml), as local processes."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the cluster extra is not installed")
    p = run_cli(tmp_path, "-m", "hydra/launcher=submitit_local", "model=shallow", "lr=1e-4,1e-3", "debug=tiny")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    _, runs = store(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("fer_exp.role") == "sweep"]
    children = jobs(runs)
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))  # submitit ran them


def test_a_job_left_running_is_ended_lost_when_the_sweep_ends(tmp_path, monkeypatch, capsys):
    """A worker killed mid-job never ends its run: the sweep's end does, FAILED with the reason."""
    from mlflow.tracking import MlflowClient

    from fer_exp import tracking
    from fer_exp.sweeps import lifecycle

    exp = tracking.configure(None, tmp_path / "mlruns")
    client = MlflowClient()
    parent = client.create_run(exp, tags={tracking.TAG_ROLE: "sweep"}).info.run_id
    done = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
    client.log_metric(done, "best_val_accuracy", 0.3)
    client.set_terminated(done)
    lost = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
    monkeypatch.setenv(tracking.PARENT_ENV, parent)
    lifecycle.end_abandoned_sweep()  # as at exit after the launcher raised
    assert client.get_run(lost).info.status == "FAILED" and client.get_run(lost).data.tags["fer_exp.error"].startswith(
        "lost"
    )
    assert client.get_run(done).info.status == "FINISHED" and client.get_run(parent).info.status == "FAILED"
    assert "2 job(s), 1 not finished" in capsys.readouterr().out
    lifecycle.end_abandoned_sweep()  # nothing left to end: a no-op


def test_a_sweeps_jobs_and_their_estimate_come_from_its_overrides_and_this_cpus_runs(monkeypatch):
    from fer_exp.sweeps import eta

    speed = {"model.filters": "[32, 64]", "batch_size": "64", "precision": "auto"}
    jobs = eta.grid(
        ["model=deep,shallow", "lr=1e-4,1e-3", "epochs=2", "data.root=/data/my faces"], "deep", 30, None, speed
    )
    same = {"batch_size": "64", "precision": "auto"}  # a swept model's settings are not the config's
    assert (
        jobs
        == [{"model": "deep", "epochs": 2, "same": same}] * 2 + [{"model": "shallow", "epochs": 2, "same": same}] * 2
    )
    assert (
        eta.grid(["lr=1e-4"], "vgg", 5, n_trials=3, speed=speed) == [{"model": "vgg", "epochs": 5, "same": speed}] * 3
    )
    assert eta.grid(["experiment=fast,recipe"], "vgg", 5, speed=speed)[0]["same"] == {}
    assert eta.grid(["+model.batch_norm=fused", "batch_size=32,64"], "vgg", 5, speed=speed)[0]["same"] == {
        "model.filters": "[32, 64]",
        "precision": "auto",
    }
    assert eta.alike_params({**speed, "lr": "0.1"}, speed)
    assert not eta.alike_params({**speed, "model.batch_norm": "fused"}, speed)  # a setting the config does not have
    # per epoch, as this CPU's earlier runs took: deep's at batch size 64 count alone, shallow never ran at 64
    seconds = {
        "deep": [(60.0, {"batch_size": "64", "precision": "auto"}), (90.0, same), (500.0, {"batch_size": "16"})],
        "shallow": [(30.0, {"batch_size": "16", "precision": "auto"})],
        "vgg": [],
    }
    monkeypatch.setattr(eta.tracking, "epoch_seconds", lambda cpu, model, data: seconds[model])
    minutes, source = eta.estimate([*jobs, {"model": "vgg", "epochs": 1, "same": {}}], "AMD EPYC", "fer2013")
    assert minutes == [2.5, 2.5, 1.0, 1.0, None]
    assert "deep: 2 run(s), shallow: 1 run(s) of other settings" in source
    progress = eta.Progress([3.0, 3.0, 6.0])
    assert progress.plan(source).startswith("3 jobs, about 12 minutes (estimated from earlier runs on this CPU")
    monkeypatch.setattr(eta.time, "time", lambda: progress.start + 6 * 60)  # the first job took twice its estimate
    line = progress.job_done()
    assert line.startswith("job 1 of 3 done, ETA ") and line.endswith("(18 minutes to go)")
