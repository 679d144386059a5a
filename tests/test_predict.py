"""predict: faces found in photos, pre-cropped faces, bad files reported, the rest processed."""

import csv

import cv2
import keras
import numpy as np
import pytest

from conftest import CLASSES, SHARED_FER
from fer_exp import predict
from fer_exp.synthetic import make_split


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A small (untrained) 48x48 -> 7 classifier saved as .h5, as the runner saves models."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(7, activation="softmax")])
    path = tmp_path_factory.mktemp("model") / "model.h5"
    model.save(path)
    return path


def test_no_detect_folder_with_broken_files(model_file, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, img in enumerate(make_split(1, CLASSES, 96, seed=0).images[:3]):
        cv2.imwrite(str(photos / f"face{i}.png"), cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    code = predict.main([f"model={model_file}", str(photos), "--no-detect", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    lines = [line.split("\t") for line in captured.out.splitlines() if "\tface " in line]
    assert [line[0].rsplit("/", 1)[1] for line in lines] == ["face0.png", "face1.png", "face2.png"]
    assert all(line[1] == "face 1/1" and line[2] == "box 0,0,96,96" and line[3] in CLASSES and 0 < float(line[4]) <= 1 for line in lines)
    assert "broken.jpg: error: unreadable or not an image" in captured.err and "empty.png: error" in captured.err
    assert "3 of 5 file(s) processed, 3 face(s); 2 failed" in captured.err
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and set(rows[0]) >= {"path", "x", "label", "confidence", *CLASSES}
    assert all(abs(sum(float(r[c]) for c in CLASSES) - 1) < 1e-4 for r in rows)
    assert len(list(out.glob("*.png"))) == 3


def test_missing_model_and_missing_file(model_file, tmp_path, capsys):
    assert predict.main(["model=nope.h5", str(tmp_path)]) == 2
    assert "cannot load model nope.h5" in capsys.readouterr().err
    assert predict.main([f"model={model_file}", str(tmp_path / "missing.jpg")]) == 1
    assert "missing.jpg: error: no such file" in capsys.readouterr().err


def test_photo_without_a_face_is_reported(model_file, tmp_path, capsys):
    noise = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "noise.png"), noise)
    assert predict.main([f"model={model_file}", str(tmp_path / "noise.png")]) == 1
    assert "noise.png: error: no face found" in capsys.readouterr().err


def pasted_photo(faces: list[np.ndarray], size: int = 160) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A 700x400 colour photo (gradient background) with each face enlarged and pasted side by side."""
    photo = np.zeros((400, 700, 3), np.uint8)
    photo[:] = np.linspace(40, 200, 700, dtype=np.uint8)[None, :, None]
    corners = [(60 + i * 330, 100 + 60 * i) for i in range(len(faces))]
    for (x, y), face in zip(corners, faces):
        photo[y : y + size, x : x + size] = cv2.cvtColor(cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC), cv2.COLOR_GRAY2BGR)
    return photo, corners


@pytest.mark.skipif(not SHARED_FER.is_dir(), reason="needs ../shared/fer2013")
def test_two_pasted_faces_are_found_and_labelled(model_file, tmp_path, capsys):
    finder = predict.FaceFinder()
    faces = []
    for path in sorted((SHARED_FER / "validation" / "happy").glob("*"))[:40]:
        face = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if len(finder.find(cv2.cvtColor(pasted_photo([face])[0], cv2.COLOR_BGR2GRAY))) == 1:  # Haar finds it alone
            faces.append(face)
        if len(faces) == 2:
            break
    assert len(faces) == 2, "Haar found fewer than 2 of 40 FER2013 faces"
    photo, corners = pasted_photo(faces)
    cv2.imwrite(str(tmp_path / "two.jpg"), photo)
    assert predict.main([f"model={model_file}", str(tmp_path / "two.jpg"), "--out", str(tmp_path / "out")]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines() if "\tface " in line]
    assert [line[1] for line in lines] == ["face 1/2", "face 2/2"]
    for line, (x, y) in zip(lines, corners):
        bx, by, bw, bh = map(int, line[2].split()[1].split(","))
        assert abs(bx + bw / 2 - (x + 80)) < 40 and abs(by + bh / 2 - (y + 80)) < 40  # centred on the pasted face
        assert line[3] in CLASSES
    assert (tmp_path / "out" / "0000_two.png").exists()
