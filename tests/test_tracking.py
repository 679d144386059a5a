"""The tracking package on a real SQLite MLflow store: writes by run id, records, lookups, the story run."""

import pytest

from fer_exp import tracking


@pytest.fixture
def experiment(tmp_path):
    exp_id = tracking.configure(None, tmp_path / "mlruns", "tracked")
    return tmp_path, exp_id


def test_writes_by_run_id_land_on_that_run_and_records_read_them_back(experiment):
    tmp, exp_id = experiment
    first = tracking.create_run(exp_id, "first", {tracking.TAG_ROLE: "job"})
    second = tracking.create_run(exp_id, "second", {tracking.TAG_ROLE: "job"})
    tracking.set_tags({"a": "1", "b": "2"}, run_id=first)
    tracking.log_metrics({"best_val_accuracy": 0.5, "params": 7}, run_id=first)
    (tmp / "note.txt").write_text("hello")
    tracking.log_files([tmp / "note.txt"], run_id=first)
    tracking.end_run(first, "FINISHED", {"c": "3"})
    record = tracking.get_record(first)
    assert record["status"] == "FINISHED" and record["experiment_id"] == exp_id and record["name"] == "first"
    assert {"a": "1", "b": "2", "c": "3"}.items() <= record["tags"].items()
    assert record["metrics"] == {"best_val_accuracy": 0.5, "params": 7.0} and record["datasets"] == {}
    assert tracking.artifact_text(first, "note.txt") == "hello" and tracking.artifact_text(first, "none.txt") is None
    assert tracking.get_record(second)["tags"].keys().isdisjoint({"a", "b", "c"})
    assert [r["name"] for r in tracking.experiment_runs("tracked")] == ["first", "second"]  # oldest first
    assert [r["name"] for r in tracking.job_records(exp_id)] == ["first"]  # FINISHED jobs only


def test_run_references_and_lookups_say_what_is_missing(experiment, tmp_path):
    _, exp_id = experiment
    run = tracking.create_run(exp_id, "r", {})
    assert tracking.resolve_run(run) == run == tracking.resolve_run(f"runs:/{run}/model")
    with pytest.raises(tracking.TrackingError) as missing:
        tracking.get_record("0" * 32)
    assert tracking.describe_error(missing.value, "sqlite:///x").startswith("not found in sqlite:///x: Run")
    with pytest.raises(LookupError, match="no experiment 'nope' in this store \\(there: "):
        tracking.experiment_runs("nope")
    assert "no MLflow store at" in tracking.missing_store(tracking.store_uris(tmp_path / "elsewhere")[0])
    assert tracking.missing_store(tracking.store_uris(tmp_path / "mlruns")[0]) is None
    assert tracking.missing_store("http://127.0.0.1:5050") is None


def test_the_story_run_is_created_once_and_holds_every_page(experiment):
    tmp, exp_id = experiment
    page = tmp / "story.html"
    page.write_text("<html></html>")
    run = tracking.log_story("tracked", "story", [page])
    assert tracking.log_story("tracked", "story", [page]) == run
    record = tracking.get_record(run)
    assert record["status"] == "FINISHED" and record["tags"][tracking.TAG_ROLE] == "story"
    assert tracking.artifact_text(run, "story.html") == "<html></html>"
    assert tracking.job_records(exp_id) == []  # not a job: compare, ensembles and reproduce never see it
