"""python -m fer_exp.evaluate on folders the model never saw, from a run or a file."""

import csv
import shutil

import pytest

from conftest import CLASSES, write_folders
from fer_exp.evaluate import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory, request):
    """A tiny run in its own store: (run id, store dir, output dir with model.h5)."""
    from hydra import compose, initialize_config_dir

    from conftest import CONF
    from fer_exp.train import train

    tmp = tmp_path_factory.mktemp("trained")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", ["model=shallow", "data=synthetic", "data.train_per_class=4", "data.val_per_class=2", "epochs=1", "batch_size=8", f"tracking.dir={tmp / 'mlruns'}"])
    result = train(cfg, output_dir=tmp / "out")
    return result["run_id"], tmp / "mlruns", tmp / "out"


def test_evaluate_a_logged_run_on_a_new_labelled_folder(tmp_path, trained, capsys):
    run_id, store, _ = trained
    write_folders(tmp_path / "new", per_class=2, splits=("test",), seed=99)
    assert main([f"model=runs:/{run_id}/model", f"data_dir={tmp_path / 'new' / 'test'}", "tta=4", f"out_dir={tmp_path / 'ev'}", f"tracking_dir={store}"]) == 0
    out = capsys.readouterr().out
    assert "14 images" in out and "single view" in out and "with 4-view TTA" in out and "surprise" in out
    rows = list(csv.reader(open(tmp_path / "ev" / "predictions.csv")))
    assert rows[0] == ["path", "true_label", "predicted_label", *CLASSES] and len(rows) == 15
    assert all(r[1] in CLASSES and r[2] in CLASSES and abs(sum(map(float, r[3:])) - 1) < 1e-4 for r in rows[1:])
    assert (tmp_path / "ev" / "confusion_matrix.png").stat().st_size > 0


def test_evaluate_an_h5_file_on_loose_images(tmp_path, trained, capsys):
    _, _, out_dir = trained
    write_folders(tmp_path / "new", per_class=1, splits=("x",))
    loose = tmp_path / "loose"
    loose.mkdir()
    for i, f in enumerate(sorted((tmp_path / "new" / "x").glob("*/*"))):
        shutil.copy(f, loose / f"{i}.png")
    (loose / "broken.jpg").write_text("nope")
    assert main([f"model={out_dir / 'model.h5'}", f"data_dir={loose}", "tta=1", f"out_dir={tmp_path / 'ev'}"]) == 0
    out = capsys.readouterr().out
    assert "7 images" in out and "(1 skipped)" in out and "accuracy" not in out
    rows = list(csv.reader(open(tmp_path / "ev" / "predictions.csv")))
    assert rows[0] == ["path", "predicted_label", *CLASSES] and len(rows) == 8


def test_evaluate_reports_bad_arguments(tmp_path, capsys):
    assert main(["data_dir=x"]) == 2
    assert main([f"model={tmp_path / 'none.h5'}", f"data_dir={tmp_path}"]) == 2
    assert "model file not found" in capsys.readouterr().err
