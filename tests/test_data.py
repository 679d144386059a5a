import logging
import os

import cv2
import numpy as np
import pytest
from helpers.data import CLASSES, by_class, dirty_folders, write_csv, write_folders
from helpers.runner import run_cli
from omegaconf import OmegaConf

from fer_exp import data
from fer_exp.data import DataError, load_data, load_folder_split
from fer_exp.data import folders as folders_module


def data_cfg(compose, *overrides):
    return OmegaConf.to_container(compose(list(overrides)).data, resolve=True)


def test_folders_give_configured_label_ids(tmp_path, compose):
    written = write_folders(tmp_path / "fer", per_class=2)
    cfg = data_cfg(compose, f"data.root={tmp_path / 'fer'}", f"data.cache_dir={tmp_path / 'cache'}")
    splits, source = load_data(cfg)
    for name in ("train", "validation"):
        images, labels = by_class(written[name])
        np.testing.assert_array_equal(splits[name].labels, labels)
        np.testing.assert_array_equal(splits[name].images, images)  # PNG is lossless
    assert source == str((tmp_path / "fer").resolve())


def test_csv_and_folders_give_identical_arrays_and_labels(tmp_path, compose):
    written = write_folders(tmp_path / "fer", per_class=3)
    write_csv(tmp_path / "fer2013.csv", {"Training": written["train"], "PublicTest": written["validation"]})
    from_folders, _ = load_data(data_cfg(compose, f"data.root={tmp_path / 'fer'}", "data.cache_dir=null"))
    csv_cfg = data_cfg(
        compose, "data=fer2013_csv", f"data.path={tmp_path / 'fer2013.csv'}", f"data.cache_dir={tmp_path / 'cache'}"
    )
    from_csv, _ = load_data(csv_cfg)
    assert len(list((tmp_path / "cache").glob("fer2013-*.npz"))) == 3  # one parse cached every Usage
    for name in ("train", "validation"):
        np.testing.assert_array_equal(from_csv[name].labels, from_folders[name].labels)
        np.testing.assert_array_equal(from_csv[name].images, from_folders[name].images)
    # CSV id 4 is sad and 6 neutral: mapped by name, not by position
    assert from_csv["train"].labels.tolist().count(CLASSES.index("sad")) == 3


def test_csv_bad_rows_are_reported_with_line_numbers(tmp_path, compose):
    written = write_folders(tmp_path / "fer", per_class=1)
    good = " ".join(["7"] * 2304)
    bad = [f"3,{' '.join(['1'] * 100)},Training", f"3,{good[:-1]}x,Training", f"9,{good},Training", f"3,{good},Mystery"]
    write_csv(tmp_path / "f.csv", {"Training": written["train"], "PublicTest": written["validation"]}, rows_after=bad)
    cfg = data_cfg(compose, "data=fer2013_csv", f"data.path={tmp_path / 'f.csv'}", "data.cache_dir=null")
    splits, _ = load_data(cfg)
    assert len(splits["train"]) == 7
    reasons = dict(splits["train"].skipped)
    assert reasons == {
        "f.csv line 16": "100 pixel values, expected 48x48 = 2304",
        "f.csv line 17": "non-numeric pixel values",
        "f.csv line 18": "unknown emotion id '9' (expected 0..6)",
        "f.csv line 19": "unknown Usage 'Mystery' (expected one of Training, PublicTest, PrivateTest)",
    }
    with pytest.raises(DataError, match=r"(?s)4 unreadable.*f.csv line 16.*line 19"):
        load_data({**cfg, "strict": True})


def test_csv_missing_file_names_the_path_and_the_fix(tmp_path, compose):
    with pytest.raises(DataError, match=r"(?s)CSV file not found: .*nope.csv.*data.path="):
        load_data(data_cfg(compose, "data=fer2013_csv", f"data.path={tmp_path / 'nope.csv'}"))


def test_dirty_folder_is_skipped_converted_and_reported(tmp_path, compose, caplog):
    root = dirty_folders(tmp_path / "fer")
    cfg = data_cfg(compose, f"data.root={root}", "data.cache_dir=null")
    with caplog.at_level(logging.WARNING):
        splits, _ = load_data(cfg)
    train = splits["train"]
    assert sorted(os.path.basename(p) for p, _ in train.skipped) == ["corrupt.jpg", "empty.jpg", "notes.jpg"]
    assert "corrupt.jpg" in caplog.text and "skipped 3" in caplog.text
    assert train.stats == {"to_gray": 2, "resized": 1}
    assert len(train) == 14 + 3 and train.counts(7)[CLASSES.index("happy")] == 5
    with pytest.raises(DataError, match=r"(?s)3 unreadable.*corrupt.jpg.*empty.jpg.*notes.jpg"):
        load_data({**cfg, "strict": True})


def test_missing_root_and_split_name_the_path_layout_and_override(tmp_path):
    with pytest.raises(DataError, match=r"(?s)data root not found: .*nowhere.*Expected layout.*data.root="):
        load_folder_split(tmp_path / "nowhere", "train", CLASSES)
    (tmp_path / "fer" / "Training").mkdir(parents=True)
    with pytest.raises(
        DataError, match=r"(?s)split folder not found: .*fer/train \(folders there: \['Training'\]\).*data.train_split"
    ):
        load_folder_split(tmp_path / "fer", "train", CLASSES)


@pytest.mark.slow
def test_missing_root_on_the_command_line_is_a_message_not_a_traceback(tmp_path):
    p = run_cli(tmp_path, f"data.root={tmp_path / 'nowhere'}", timeout=300, report_tensorflow=True)
    out = p.stderr + p.stdout
    assert p.returncode == 2 and "data root not found" in out and "data.root=" in out, out[-3000:]
    assert "Traceback" not in out
    assert p.stdout.splitlines()[-1] == "tensorflow imported: False"  # checked before it loads


def test_split_missing_a_class_warns_and_keeps_label_ids(folders, caplog):
    for f in (folders / "validation" / "disgust").iterdir():
        f.unlink()
    (folders / "validation" / "disgust").rmdir()
    with caplog.at_level(logging.WARNING):
        val = load_folder_split(folders, "validation", CLASSES)
    assert "no folder for class(es) ['disgust']" in caplog.text
    assert sorted(set(val.labels.tolist())) == [0, 2, 3, 4, 5, 6]


def test_training_split_without_a_class_is_an_error(folders, compose):
    for f in (folders / "train" / "fear").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"no images of class\(es\) \['fear'\].*head has 7 outputs"):
        load_data(data_cfg(compose, f"data.root={folders}", "data.cache_dir=null"))


def test_unknown_class_folder_is_an_error_unless_ignored(folders, compose, caplog):
    (folders / "train" / "contempt").mkdir()
    cv2.imwrite(str(folders / "train" / "contempt" / "a.png"), np.zeros((48, 48), np.uint8))
    cfg = data_cfg(compose, f"data.root={folders}", "data.cache_dir=null")
    with pytest.raises(DataError, match=r"(?s)\['contempt'\] are not in data.classes.*unknown_classes=ignore"):
        load_data(cfg)
    with caplog.at_level(logging.WARNING):
        splits, _ = load_data({**cfg, "unknown_classes": "ignore"})
    assert "ignoring class folders not in data.classes: ['contempt']" in caplog.text
    assert len(splits["train"]) == 21  # the 3 per class written, not the extra folder


def test_empty_split_is_an_error(folders, compose):
    for f in (folders / "validation").glob("*/*"):
        f.unlink()
    with pytest.raises(DataError, match="validation split 'validation'.*no usable images"):
        load_data(data_cfg(compose, f"data.root={folders}", "data.cache_dir=null"))


def test_cache_is_used_and_invalidated_by_changed_added_removed_files(folders, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_folder_split(folders, "train", CLASSES, cache_dir=str(cache))
    assert len(list(cache.glob("*.npz"))) == 1
    real_decode = folders_module.decode_files
    calls = []
    monkeypatch.setattr(folders_module, "decode_files", lambda *a, **k: calls.append(1) or real_decode(*a, **k))
    again = load_folder_split(folders, "train", CLASSES, cache_dir=str(cache))
    assert calls == [] and np.array_equal(again.images, first.images) and again.sources == first.sources

    some = sorted((folders / "train" / "sad").iterdir())[0]
    cv2.imwrite(str(some), np.zeros((48, 48), np.uint8))
    os.utime(some, ns=(1, 1))  # a new modification time
    changed = load_folder_split(folders, "train", CLASSES, cache_dir=str(cache))
    assert calls == [1] and changed.images.min() == 0 and changed.digest != first.digest
    cv2.imwrite(str(folders / "train" / "sad" / "extra.png"), np.ones((48, 48), np.uint8))
    assert len(load_folder_split(folders, "train", CLASSES, cache_dir=str(cache))) == len(first) + 1
    (folders / "train" / "sad" / "extra.png").unlink()
    some.unlink()
    assert len(load_folder_split(folders, "train", CLASSES, cache_dir=str(cache))) == len(first) - 1
    assert calls == [1, 1, 1]


def test_synthetic_is_deterministic_balanced_and_sized():
    make_split = data.synthetic_split
    a, b, c = make_split(5, CLASSES, 48, seed=1), make_split(5, CLASSES, 48, seed=1), make_split(5, CLASSES, 48, seed=2)
    assert a.images.shape == (35, 48, 48) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert a.counts(7).tolist() == [5] * 7
    assert make_split(2, CLASSES, 64).images.shape == (14, 64, 64)


def test_synthetic_rejects_classes_it_cannot_draw():
    with pytest.raises(DataError, match="contempt"):
        data.synthetic_split(2, ["happy", "contempt"])


def test_balanced_class_weights_and_per_class_limit():
    labels = np.array([0] * 6 + [1] * 2 + [2] * 4)
    w = data.class_weights(labels, 4)
    assert w == pytest.approx({0: 12 / 18, 1: 12 / 6, 2: 12 / 12})
    split = data.Split(np.zeros((12, 2, 2), np.uint8), labels, [str(i) for i in range(12)])
    small = data.limit_per_class(split, 3, 4)
    assert small.counts(4).tolist() == [3, 2, 3, 0] and small.sources == ["0", "1", "2", "6", "7", "8", "9", "10"]


def test_count_table_lists_every_class_and_total():
    split = data.Split(np.zeros((3, 2, 2), np.uint8), np.array([0, 3, 3]))
    table = data.count_table({"train": split}, CLASSES)
    assert (
        "happy" in table
        and table.splitlines()[4].split() == ["happy", "2"]
        and table.splitlines()[-1].split() == ["total", "3"]
    )
