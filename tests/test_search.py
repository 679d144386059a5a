"""Searches and sweeps that stop hopeless jobs early: the Optuna sweeper (hparams_search=optuna) on
current Optuna, and pruner=median for grid sweeps, run for real on a small synthetic set
(conf/debug/small.yaml: the shallow model learns it within a few epochs)."""

import optuna
import pytest
from helpers.runner import jobs, run_cli, store

from fer_exp.sweeps import results

slow = pytest.mark.slow
# a search over the learning rate alone (the command line fixes what hparams_search=optuna also searches)
SEARCH = [
    "-m",
    "hparams_search=optuna",
    "debug=small",
    "pruner=median",
    "model=shallow",
    "batch_size=16",
    "augment.rotation=0",
    "augment.shift=0",
    "augment.zoom=0",
    "lr=tag(log, interval(1e-7, 3e-4))",
]
HOPELESS = "lr=tag(log, interval(1e-7, 5e-7))"  # near chance after every epoch


def test_optuna_is_current():
    assert int(optuna.__version__.split(".")[0]) >= 4


def test_search_space_comes_from_params_and_the_command_line():
    from hydra_plugins.fer_exp_optuna import as_override, search_space

    space, fixed = search_space(
        [
            "lr=tag(log, interval(1e-4, 3e-3))",
            "model=choice(deep, shallow)",
            "batch_size=choice(32, 64)",
            "epochs=range(2, 5)",
            "model=shallow",
            "seed=3",
        ]
    )
    assert space["lr"] == optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)
    assert space["batch_size"].choices == (32, 64) and space["epochs"] == optuna.distributions.IntDistribution(2, 4)
    assert "model" not in space and fixed == ["model=shallow", "seed=3"]  # a later fixed value replaces the search
    assert as_override("lr", 0.000123456) == "lr=0.0001235" and as_override("model", "deep") == "model=deep"


def test_pruned_jobs_are_listed_apart_after_the_others():
    def job(name, value, stop):
        return {
            "run_id": name,
            "name": f"lr={name}",
            "status": "FINISHED",
            "tags": {"fer_exp.stop_reason": stop},
            "metrics": {"best_val_accuracy": value},
            "start": 0,
            "end": 60000,
            "history": [],
        }

    rows = results.job_rows(
        [job("a", 0.5, "pruned"), job("b", 0.3, "epochs"), job("c", 0.4, "epochs")], "best_val_accuracy"
    )
    assert [(r["label"], r["status"]) for r in rows] == [("lr=c", "FINISHED"), ("lr=b", "FINISHED"), ("lr=a", "PRUNED")]


def by_lr(runs):
    return {r.data.params["lr"]: r for r in jobs(runs)}


@slow
def test_a_grid_sweep_prunes_the_hopeless_job(tmp_path):
    p = run_cli(tmp_path, "-m", "debug=small", "lr=1e-4,3e-4,1e-7", "pruner=median")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    client, runs = store(tmp_path)
    found = by_lr(runs)
    hopeless = found["1e-07"]
    assert hopeless.info.status == "FINISHED" and hopeless.data.tags["fer_exp.stop_reason"] == "pruned"
    assert hopeless.data.metrics["epochs_run"] < 4 and hopeless.data.tags["fer_exp.trial"].startswith(
        "2 of study grid "
    )
    assert all(found[lr].data.metrics["epochs_run"] == 4 for lr in ("0.0001", "0.0003"))
    saved = 4 - int(hopeless.data.metrics["epochs_run"])
    assert f"pruned 1 of 3 job(s), after epoch(s) {4 - saved}: {saved} epoch(s) not trained" in p.stdout
    assert "PRUNED" in p.stdout and "fer_exp.best" not in hopeless.data.tags
    (parent,) = [r for r in runs if r.data.tags.get("fer_exp.role") == "sweep"]
    assert {"study_optimization_history.png", "study_intermediate_values.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }


def search_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage).trials


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """(folder, finished process) of a 6-trial search, one trial at a time; the tests below read and resume it."""
    tmp = tmp_path_factory.mktemp("search")
    return tmp, run_cli(tmp, *SEARCH, "hydra.sweeper.n_trials=6")


@slow
def test_a_search_prunes_its_hopeless_trials_and_reports_every_epoch(search):
    tmp_path, p = search
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    _, runs = store(tmp_path)
    pruned = [r for r in jobs(runs) if r.data.tags.get("fer_exp.stop_reason") == "pruned"]
    assert len(jobs(runs)) == 6 and pruned and all(r.data.metrics["epochs_run"] < 4 for r in pruned)
    (parent,) = [r for r in runs if r.data.tags.get("fer_exp.role") == "sweep"]
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs(runs)} == {parent.info.run_id}  # trials are child runs
    best = [r for r in jobs(runs) if r.data.tags.get("fer_exp.best") == "true"]
    assert len(best) == 1 and parent.data.tags["fer_exp.best_run"] == best[0].info.run_id and best[0] not in pruned
    trials = search_trials(tmp_path)
    assert [t.state.name for t in trials].count("PRUNED") == len(pruned) and len(trials) == 6
    assert all(len(t.intermediate_values) == 4 for t in trials if t.state.name == "COMPLETE")  # reported every epoch


@slow
def test_resume_continues_the_study_in_parallel_processes_that_prune_against_it(search):
    """The search resumed with two more trials, in two joblib processes at once, on a narrowed range of
    hopeless learning rates: both are pruned against the first six, which the jobs read from the study."""
    tmp_path, first = search
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    parallel = ["hydra.sweeper.n_jobs=2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    again = run_cli(tmp_path, *SEARCH[:-1], HOPELESS, "hydra.sweeper.n_trials=8", *parallel, "resume=true")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "2 job(s), 0 not finished" in again.stdout and "6 trial(s) done before" in again.stdout + again.stderr
    trials = search_trials(tmp_path)  # one study: the first six and two new trials
    assert len(trials) == 8 and [t.state.name for t in trials[6:]] == ["PRUNED", "PRUNED"]
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    _, runs = store(tmp_path)
    newest = sorted(jobs(runs), key=lambda r: r.info.start_time)[6:]
    assert len(jobs(runs)) == 8 and all(r.data.tags["fer_exp.stop_reason"] == "pruned" for r in newest)
