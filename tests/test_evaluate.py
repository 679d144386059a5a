"""python -m fer_exp.evaluate and predict on folders the model never saw, from a run or a file;
the class names travel with the model."""

import csv
import shutil

import pytest
from helpers.data import write_folders

from fer_exp import predict
from fer_exp.evaluate import main

THREE = ["happy", "neutral", "sad"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run on class folders of only happy, neutral and sad, with data.classes=[happy,neutral,sad],
    in its own store: (run id, store dir, output dir with model.h5)."""
    from helpers.runner import CONF
    from hydra import compose, initialize_config_dir

    from fer_exp.training.job import train

    tmp = tmp_path_factory.mktemp("trained")
    write_folders(tmp / "fer", per_class=4, classes=THREE)
    overrides = [
        f"data.root={tmp / 'fer'}",
        "data.classes=[happy,neutral,sad]",
        "data.cache_dir=null",
        "model=shallow",
        "epochs=1",
        "batch_size=8",
        f"tracking.dir={tmp / 'mlruns'}",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides)
    result = train(cfg, output_dir=tmp / "out")
    return result["run_id"], tmp / "mlruns", tmp / "out"


def test_evaluate_a_logged_run_on_a_new_labelled_folder(tmp_path, trained, capsys):
    run_id, store, _ = trained
    write_folders(tmp_path / "new", per_class=2, splits=("test",), classes=THREE, seed=99)
    assert (
        main(
            [
                f"model=runs:/{run_id}/model",
                f"data_dir={tmp_path / 'new' / 'test'}",
                "tta=4",
                f"out_dir={tmp_path / 'ev'}",
                f"tracking.dir={store}",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "6 images" in out and "classes happy, neutral, sad" in out and "single view" in out and "with 4-view TTA" in out
    )
    rows = list(csv.reader(open(tmp_path / "ev" / "predictions.csv")))
    assert rows[0] == ["path", "true_label", "predicted_label", *THREE] and len(rows) == 7
    assert all(r[1] in THREE and r[2] in THREE and abs(sum(map(float, r[3:])) - 1) < 1e-4 for r in rows[1:])
    assert (tmp_path / "ev" / "confusion_matrix.png").stat().st_size > 0


def test_evaluate_an_h5_file_on_loose_images(tmp_path, trained, capsys):
    _, _, out_dir = trained
    assert (out_dir / "classes.json").read_text().strip() == '["happy", "neutral", "sad"]'  # beside model.h5
    write_folders(tmp_path / "new", per_class=2, splits=("x",), classes=THREE)
    loose = tmp_path / "loose"
    loose.mkdir()
    for i, f in enumerate(sorted((tmp_path / "new" / "x").glob("*/*"))):
        shutil.copy(f, loose / f"{i}.png")
    (loose / "broken.jpg").write_text("nope")
    assert main([f"model={out_dir / 'model.h5'}", f"data_dir={loose}", "tta=1", f"out_dir={tmp_path / 'ev'}"]) == 0
    out = capsys.readouterr().out
    assert "6 images" in out and "(1 skipped)" in out and "accuracy" not in out
    rows = list(csv.reader(open(tmp_path / "ev" / "predictions.csv")))
    assert rows[0] == ["path", "predicted_label", *THREE] and len(rows) == 7


def test_predict_labels_faces_with_the_models_own_classes(tmp_path, trained, capsys):
    run_id, store, out_dir = trained
    write_folders(tmp_path / "new", per_class=1, splits=("x",))  # faces of all seven kinds
    faces = sorted((tmp_path / "new" / "x").glob("*/*"))
    for model in (f"model=runs:/{run_id}/model", f"model={out_dir / 'model.h5'}"):
        assert predict.main([model, *map(str, faces), "--no-detect", "--tracking-dir", str(store)]) == 0
        labels = [line.split("\t")[3] for line in capsys.readouterr().out.splitlines() if "\tface " in line]
        assert len(labels) == 7 and set(labels) <= set(THREE)


def test_a_class_list_that_does_not_fit_the_model_is_an_error(tmp_path, trained, capsys):
    _, _, out_dir = trained
    shutil.copy(out_dir / "model.h5", tmp_path / "model.h5")
    (tmp_path / "classes.json").write_text('["happy", "sad"]')
    assert main([f"model={tmp_path / 'model.h5'}", f"data_dir={tmp_path}"]) == 2
    assert "has 3 outputs but its class list has 2" in capsys.readouterr().err


def test_evaluate_reports_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["data_dir=x"])
    assert exit_.value.code == 2 and "error: model= required" in capsys.readouterr().err
    assert main([f"model={tmp_path / 'none.h5'}", f"data_dir={tmp_path}"]) == 2
    assert "model file not found" in capsys.readouterr().err
