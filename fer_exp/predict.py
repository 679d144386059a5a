"""Find the faces in photos and classify their expression.

    python -m fer_exp.predict model=<runs:/RUN_ID/model | models:/fer@champion | path/to/model.h5> \
        <images or folders...> [--no-detect] [--out DIR] [--tracking-dir mlruns]

Faces are found with OpenCV's Haar cascade (ships in the opencv-python wheel; works
offline), levelled by the eyes when both are found, cropped, turned gray and resized
to the model's input. One line per face: file, box (x, y, width, height), label,
confidence. --out DIR writes an annotated copy of each image and predictions.csv.
--no-detect takes each image as one pre-cropped face. Files that cannot be read, are
not images or show no face are reported and skipped; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from fer_exp.evaluate import CLASSES_FILE  # noqa: E402

CASCADES = Path(cv2.data.haarcascades)


class FaceFinder:
    """Haar cascades for faces and eyes, from the OpenCV wheel."""

    def __init__(self, min_size: int = 24):
        self.faces = cv2.CascadeClassifier(str(CASCADES / "haarcascade_frontalface_default.xml"))
        self.eyes = cv2.CascadeClassifier(str(CASCADES / "haarcascade_eye.xml"))
        if self.faces.empty() or self.eyes.empty():
            raise RuntimeError(f"OpenCV's Haar cascades are missing from {CASCADES} (opencv-python 4.x ships them)")
        self.min_size = min_size

    def find(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Face boxes (x, y, w, h), left to right."""
        found = self.faces.detectMultiScale(cv2.equalizeHist(gray), scaleFactor=1.1, minNeighbors=5, minSize=(self.min_size, self.min_size))
        return sorted((tuple(int(v) for v in box) for box in found), key=lambda b: b[0])

    def eye_angle(self, face: np.ndarray) -> float:
        """Degrees to rotate the face so that its eyes are level (0 unless two eyes are found)."""
        h, w = face.shape
        eyes = self.eyes.detectMultiScale(face[: h // 2], scaleFactor=1.1, minNeighbors=5, minSize=(w // 8, w // 8))
        if len(eyes) < 2:
            return 0.0
        (x1, y1, w1, h1), (x2, y2, w2, h2) = sorted(sorted(eyes, key=lambda e: -e[2])[:2], key=lambda e: e[0])
        angle = np.degrees(np.arctan2((y2 + h2 / 2) - (y1 + h1 / 2), (x2 + w2 / 2) - (x1 + w1 / 2)))
        return float(angle) if abs(angle) <= 30 else 0.0  # larger angles are more likely a false eye

    def crop(self, gray: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
        """The face in `box`, eyes levelled, as a size x size uint8 image."""
        x, y, w, h = box
        angle = self.eye_angle(gray[y : y + h, x : x + w])
        if angle:
            rotation = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), angle, 1.0)
            gray = cv2.warpAffine(gray, rotation, gray.shape[::-1], borderMode=cv2.BORDER_REPLICATE)
        return cv2.resize(gray[y : y + h, x : x + w], (size, size), interpolation=cv2.INTER_AREA)


def list_inputs(items: list[str]) -> list[Path]:
    """Files as given, and every non-hidden file under each folder (sorted)."""
    paths = []
    for item in map(Path, items):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(item).parts))
        else:
            paths.append(item)
    return paths


def annotate(image: np.ndarray, faces: list[dict]) -> np.ndarray:
    """A copy of the image with each face's box and label drawn on it."""
    out = image.copy()
    scale = max(0.4, min(out.shape[:2]) / 600)
    for f in faces:
        x, y, w, h = f["box"]
        cv2.rectangle(out, (x, y), (x + w, y + h), (0, 200, 0), max(1, round(2 * scale)))
        cv2.putText(out, f"{f['label']} {f['confidence']:.2f}", (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 200, 0), max(1, round(scale)))
    return out


def predict_file(path: Path, model, finder: FaceFinder | None, classes: list[str]) -> tuple[np.ndarray, list[dict]]:
    """(the colour image, one dict per face). Raises ValueError for a file that yields no face."""
    if not path.is_file():
        raise ValueError("no such file")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("unreadable or not an image")
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    size = int(model.input_shape[1])
    if finder is None:
        boxes, crops = [(0, 0, gray.shape[1], gray.shape[0])], [cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)]
    else:
        boxes = finder.find(gray)
        if not boxes:
            raise ValueError("no face found (--no-detect takes the whole image as the face)")
        crops = [finder.crop(gray, box, size) for box in boxes]
    x = np.stack(crops)[..., None].astype("float32") / 255.0
    probs = np.asarray(model(x, training=False))
    return image, [
        {"box": box, "label": classes[int(p.argmax())], "confidence": float(p.max()), "probs": p} for box, p in zip(boxes, probs)
    ]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # model=X (the style of the other commands) is --model X
    argv = [f"--{a.partition('=')[0].replace('_', '-')}={a.partition('=')[2]}" if a.partition("=")[0] in ("model", "tracking_dir", "tracking_uri") else a for a in argv]
    ap = argparse.ArgumentParser(prog="python -m fer_exp.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="runs:/RUN_ID/model, models:/fer@champion or a .h5/.keras file")
    ap.add_argument("inputs", nargs="+", help="image files or folders")
    ap.add_argument("--no-detect", action="store_true", help="each image is one pre-cropped face")
    ap.add_argument("--out", type=Path, help="write annotated copies and predictions.csv here")
    ap.add_argument("--min-face", type=int, default=24, help="smallest face to find, in pixels")
    ap.add_argument("--tracking-dir", default="mlruns", help="local MLflow store for runs:/ and models:/ URIs")
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"), help="MLflow server instead of --tracking-dir")
    args = ap.parse_args(argv)

    from fer_exp import tracking

    classes = list(OmegaConf.load(CLASSES_FILE).classes)
    try:
        model = tracking.load_keras_model(args.model, args.tracking_uri, args.tracking_dir)
    except Exception as e:  # a wrong path, run id or alias: say so, no traceback
        print(f"error: cannot load model {args.model}: {e}", file=sys.stderr)
        return 2
    finder = None if args.no_detect else FaceFinder(args.min_face)
    paths = list_inputs(args.inputs)
    rows, failed = [], []
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    for n, path in enumerate(tqdm(paths, desc="predict", unit="img", disable=len(paths) < 2)):
        try:
            image, faces = predict_file(path, model, finder, classes)
        except ValueError as e:
            failed.append(path)
            tqdm.write(f"{path}: error: {e}", file=sys.stderr)
            continue
        for i, f in enumerate(faces, 1):
            tqdm.write(f"{path}\tface {i}/{len(faces)}\tbox {','.join(map(str, f['box']))}\t{f['label']}\t{f['confidence']:.3f}")
            rows.append([str(path), i, *f["box"], f["label"], f"{f['confidence']:.6f}", *(f"{p:.6f}" for p in f["probs"])])
        if args.out:
            cv2.imwrite(str(args.out / f"{n:04d}_{path.stem}.png"), annotate(image, faces))  # numbered: names may repeat across folders
    if args.out:
        with open(args.out / "predictions.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([["path", "face", "x", "y", "width", "height", "label", "confidence", *classes], *rows])
        print(f"annotated images and predictions.csv in {args.out}")
    print(f"{len(paths) - len(failed)} of {len(paths)} file(s) processed, {len(rows)} face(s); {len(failed)} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
