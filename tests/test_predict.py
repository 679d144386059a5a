"""predict: faces found in photos and video clips, pre-cropped faces, bad files reported, the rest processed."""

import csv

import cv2
import keras
import numpy as np
import pytest
from helpers.data import CLASSES
from helpers.runner import SHARED_FER

from fer_exp import predict
from fer_exp.data import faces, make_faces

needs_fer = pytest.mark.skipif(not SHARED_FER.is_dir(), reason="needs ../shared/fer2013")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A small (untrained) 48x48 -> 7 classifier saved as .h5 without a class list (FER2013's 7 assumed)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((48, 48, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(7, activation="softmax"),
        ]
    )
    path = tmp_path_factory.mktemp("model") / "model.h5"
    model.save(path)
    return path


def face_lines(out: str) -> list[list[str]]:
    return [line.split("\t") for line in out.splitlines() if "\tface " in line or "\tframe " in line]


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_no_detect_folder_with_broken_files(model_file, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, img in enumerate(make_faces(1, CLASSES, 96, seed=0)[0][:3]):
        cv2.imwrite(str(photos / f"face{i}.png"), cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    code = predict.main([f"model={model_file}", str(photos), "--no-detect", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    lines = face_lines(captured.out)
    assert [line[0].rsplit("/", 1)[1] for line in lines] == ["face0.png", "face1.png", "face2.png"]
    assert all(
        line[1] == "face 1/1" and line[2] == "box 0,0,96,96" and line[3] in CLASSES and 0 < float(line[4]) <= 1
        for line in lines
    )
    assert "broken.jpg: error: unreadable or not an image" in captured.err and "empty.png: error" in captured.err
    assert "3 of 5 file(s) processed, 3 face(s); 2 failed" in captured.err
    rows = read_rows(out / "predictions.csv")
    assert len(rows) == 3 and list(rows[0])[:8] == ["path", "face", "x", "y", "width", "height", "label", "confidence"]
    assert {*CLASSES, "detector_confidence", "left_eye_x", "mouth_right_y", "frame", "time_s"} <= set(rows[0])
    assert all(abs(sum(float(r[c]) for c in CLASSES) - 1) < 1e-4 for r in rows)
    assert len(list(out.glob("*.png"))) == 3


def test_missing_model_and_missing_file(model_file, tmp_path, capsys):
    assert predict.main(["model=nope.h5", str(tmp_path)]) == 2
    assert "cannot load model nope.h5" in capsys.readouterr().err
    assert predict.main([f"model={model_file}", str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "out")]) == 1
    assert "missing.jpg: error: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("detector", ["mtcnn", "haar"])
def test_photo_without_a_face_is_reported(model_file, tmp_path, capsys, detector):
    noise = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "noise.png"), noise)
    assert (
        predict.main(
            [f"model={model_file}", str(tmp_path / "noise.png"), "--detector", detector, "--out", str(tmp_path / "out")]
        )
        == 1
    )
    assert "noise.png: error: no face found" in capsys.readouterr().err


def test_level_and_crop_rotates_about_the_centre_and_scales():
    img = np.zeros((200, 200), np.uint8)
    img[90:110, 40:160] = 255  # a horizontal bar through the centre
    level = faces.level_and_crop(img, (100, 100), 100, 0.0, 48)
    upright = faces.level_and_crop(img, (100, 100), 100, 90.0, 48)
    assert level.shape == (48, 48) and level[24, 2:46].min() > 200 and level[2, 24] == 0
    assert upright[2:46, 24].min() > 200 and upright[24, 2] == 0  # rotated a quarter turn
    assert (
        faces.eye_angle((30, 20), (10, 10)) == pytest.approx(26.565, abs=1e-3)
        and faces.eye_angle((10, 10), (20, 40)) == 0.0
    )  # too steep


def write_clip(path, frame: np.ndarray, seconds: float = 3, fps: int = 10) -> int:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, frame.shape[1::-1])
    for _ in range(int(seconds * fps)):
        writer.write(frame)
    writer.release()
    return int(seconds * fps)


def test_a_clip_gives_a_row_per_sampled_frame_an_annotated_clip_and_a_timeline(model_file, tmp_path, capsys):
    face = cv2.cvtColor(cv2.resize(make_faces(1, ["happy"], 48, seed=0)[0][0], (160, 160)), cv2.COLOR_GRAY2BGR)
    frames = write_clip(tmp_path / "clip.mp4", face)  # 30 frames at 10 fps: every 2nd is sampled by default
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.avi").write_text("not a video")
    out = tmp_path / "out"
    code = predict.main(
        [
            f"model={model_file}",
            str(tmp_path / "clip.mp4"),
            str(tmp_path / "empty.mp4"),
            str(tmp_path / "text.avi"),
            "--no-detect",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1 and "empty.mp4: error:" in captured.err and "text.avi: error:" in captured.err
    rows = read_rows(out / "predictions.csv")
    assert [int(r["frame"]) for r in rows] == list(range(0, frames, 2))
    assert [float(r["time_s"]) for r in rows] == pytest.approx([n / 10 for n in range(0, frames, 2)])
    assert all(r["label"] in CLASSES for r in rows) and len(face_lines(captured.out)) == 15
    annotated = cv2.VideoCapture(str(out / "0000_clip.mp4"))
    assert annotated.isOpened() and int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == frames
    assert (out / "0000_clip_timeline.png").stat().st_size > 10_000


def pasted_photo(faces_48: list[np.ndarray], size: int = 160) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A 640x480 colour photo (gradient background) with each face enlarged to `size` and pasted side by side."""
    photo = np.zeros((480, 640, 3), np.uint8)
    photo[:] = np.linspace(40, 200, 640, dtype=np.uint8)[None, :, None]
    corners = [(60 + i * 300, 120 + 80 * i) for i in range(len(faces_48))]
    for (x, y), face in zip(corners, faces_48):
        photo[y : y + size, x : x + size] = cv2.cvtColor(
            cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC), cv2.COLOR_GRAY2BGR
        )
    return photo, corners


def fer_faces(n: int, kind: str = "happy") -> list[np.ndarray]:
    return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((SHARED_FER / "validation" / kind).glob("*"))[:n]]


@needs_fer
def test_two_pasted_fer_faces_are_found_and_labelled(model_file, tmp_path, capsys):
    photo, corners = pasted_photo(fer_faces(2))
    cv2.imwrite(str(tmp_path / "two.jpg"), photo)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    cv2.imwrite(str(tmp_path / "wall.jpg"), photo[:, :50].repeat(12, axis=1)[:, :600])  # the background alone
    code = predict.main([f"model={model_file}", str(tmp_path), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 1 and "broken.jpg: error" in captured.err and "wall.jpg: error: no face found" in captured.err
    lines = face_lines(captured.out)
    assert [line[1] for line in lines] == ["face 1/2", "face 2/2"]
    for line, (x, y) in zip(lines, corners):
        bx, by, bw, bh = map(int, line[2].split()[1].split(","))
        assert abs(bx + bw / 2 - (x + 80)) < 30 and abs(by + bh / 2 - (y + 80)) < 30  # centred on the pasted face
        assert line[3] in CLASSES
    rows = read_rows(tmp_path / "out" / "predictions.csv")
    assert all(float(r["detector_confidence"]) >= 0.9 and r["left_eye_x"] for r in rows)
    assert (tmp_path / "out" / "0001_two.png").exists()  # numbered in file order: broken, two, wall


@needs_fer
def test_a_clip_of_a_photo_is_tracked_frame_by_frame_with_mtcnn(model_file, tmp_path):
    photo, _ = pasted_photo(fer_faces(1))
    frames = write_clip(tmp_path / "still.mp4", photo, seconds=3, fps=10)
    out = tmp_path / "out"
    assert predict.main([f"model={model_file}", str(tmp_path / "still.mp4"), "--every", "5", "--out", str(out)]) == 0
    rows = read_rows(out / "predictions.csv")
    assert [int(r["frame"]) for r in rows] == list(range(0, frames, 5))  # one face in each sampled frame
    assert (out / "0000_still.mp4").stat().st_size > 0 and (out / "0000_still_timeline.png").exists()


@needs_fer
def test_crops_of_detected_fer_faces_are_framed_as_fer2013():
    """Pasted at 160 px and cropped back to 48 px, FER2013 faces come out closest to the originals at
    faces.FER_SIDE; a tighter or looser square (0.8x, 1.2x the box) differs more."""
    detector = faces.MtcnnDetector()
    sides = {"tighter": 0.8, "fer": faces.FER_SIDE, "looser": 1.2}
    errors = {k: [] for k in sides}
    for face in fer_faces(12, "neutral"):
        photo, _ = pasted_photo([face])
        found = detector.detect(photo)
        if len(found) != 1:
            continue
        (x, y, w, h), marks = found[0].box, found[0].landmarks
        angle = faces.eye_angle(marks["left_eye"], marks["right_eye"])
        gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
        for k, side in sides.items():
            crop = faces.level_and_crop(gray, (x + w / 2, y + h / 2), side * max(w, h), angle, 48)
            errors[k].append(np.abs(crop.astype(float) - face).mean())
    median = {k: np.median(v) for k, v in errors.items()}
    assert len(errors["fer"]) >= 10 and median["fer"] < min(median["tighter"], median["looser"]), median
