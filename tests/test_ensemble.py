"""python -m fer_exp.ensemble: the top runs of a sweep (or the runs named) averaged into one model that evaluate,
predict, serve and the registry take like any other."""

import keras
import pytest
from helpers.data import write_folders
from helpers.runner import jobs, run_cli, store

from fer_exp import ensemble, evaluate, predict


def tiny_model(side: int, name: str) -> keras.Model:
    inputs = keras.Input((side, side, 1))
    return keras.Model(
        inputs, keras.layers.Dense(7, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs)), name=name
    )


def test_members_must_share_input_and_classes():
    fer7 = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    with pytest.raises(ensemble.EnsembleError, match="different inputs"):
        ensemble.check_compatible([tiny_model(48, "a"), tiny_model(64, "b")], [fer7, fer7], ["a", "b"])
    with pytest.raises(ensemble.EnsembleError, match="different class lists"):
        ensemble.check_compatible([tiny_model(48, "a"), tiny_model(48, "b")], [fer7, fer7[::-1]], ["a", "b"])
    with pytest.raises(ensemble.EnsembleError, match="at least 2"):
        ensemble.top_members([], "best_val_accuracy", 3)


def test_greedy_selection_starts_from_the_best_member_and_only_improves():
    import numpy as np

    labels = np.array([0, 1, 1, 0])
    probs = np.array(
        [
            [[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.6, 0.4]],  # 3 of 4 right: the best
            [[0.2, 0.8], [0.4, 0.6], [0.1, 0.9], [0.9, 0.1]],  # 3 of 4 right, other mistakes
            [[0.5, 0.5], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]],  # 2 of 4
        ]
    )
    assert ensemble.greedy(probs, labels) == [0, 1]  # together: 4 of 4
    assert ensemble.greedy(probs[[2]], labels) == [0]


@pytest.mark.slow
def test_a_sweeps_top_three_become_one_model(tmp_path, capsys):
    # float32: three epochs on small synthetic data are noisy, and bfloat16 (precision=auto's choice on
    # CPUs that have it) made one member better than the ensemble; the ensemble's mechanics are under test
    p = run_cli(tmp_path, "-m", "debug=small", "lr=1e-4,2e-4,3e-4", "epochs=3", "precision=float32")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    _, runs = store(tmp_path)
    members = {r.info.run_id: r.data.metrics["best_val_accuracy"] for r in jobs(runs)}
    store_dir = tmp_path / "mlruns"
    assert ensemble.main(["top_k=3", f"tracking_dir={store_dir}", "tta=2"]) == 0
    assert "ensemble top-3 of sweep" in capsys.readouterr().out
    client, runs = store(tmp_path)
    (run,) = [r for r in runs if r.data.tags.get("fer_exp.role") == "ensemble"]
    assert run.info.status == "FINISHED" and run.info.run_name == "ensemble top-3"
    assert set(run.data.tags["fer_exp.members"].split(",")) == set(members) and len(members) == 3
    assert run.data.tags["mlflow.parentRunId"] == jobs(runs)[0].data.tags["mlflow.parentRunId"]  # a child of the sweep
    assert run.data.metrics["best_val_accuracy"] >= max(members.values()) - 0.01
    # the ensemble is a model like any other: evaluate and predict take it
    write_folders(tmp_path / "new", per_class=2, splits=("test",), seed=5)
    uri = f"model=runs:/{run.info.run_id}/model"
    assert (
        evaluate.main(
            [
                uri,
                f"data_dir={tmp_path / 'new' / 'test'}",
                "tta=1",
                f"out_dir={tmp_path / 'ev'}",
                f"tracking_dir={store_dir}",
            ]
        )
        == 0
    )
    assert "14 images" in capsys.readouterr().out
    faces = sorted((tmp_path / "new" / "test").glob("*/*"))[:3]
    assert (
        predict.main(
            [uri, *map(str, faces), "--no-detect", "--tracking-dir", str(store_dir), "--out", str(tmp_path / "pred")]
        )
        == 0
    )
    assert len([line for line in capsys.readouterr().out.splitlines() if "\tface 1/1" in line]) == 3
    # runs= averages the runs named, wherever they come from: a top-level run, not a sweep's child
    a, b, _ = members
    assert ensemble.main([f"runs={a}", f"tracking_dir={store_dir}"]) == 2
    assert "at least 2 different run ids" in capsys.readouterr().err
    assert ensemble.main([f"runs={a},{run.info.run_id}", f"tracking_dir={store_dir}"]) == 2
    assert "members must be FINISHED job runs" in capsys.readouterr().err
    # Hydra's list form, as teacher= takes it (the comma form: tests/test_distill.py)
    assert ensemble.main([f"runs=[{a}, {b}]", f"tracking_dir={store_dir}", "tta=2"]) == 0
    assert "ensemble of 2 runs: run" in capsys.readouterr().out
    _, runs = store(tmp_path)
    (pair,) = [r for r in runs if r.info.run_name == "ensemble of 2 runs"]
    assert pair.info.status == "FINISHED" and "mlflow.parentRunId" not in pair.data.tags
    assert set(pair.data.tags["fer_exp.members"].split(",")) == {a, b}
