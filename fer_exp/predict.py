"""Find the faces in photos and video clips and classify their expressions.

    python -m fer_exp.predict model=<runs:/RUN_ID/model | models:/fer@champion | path/to/model.h5> \
        <images, videos or folders...> [detector=mtcnn|haar] [threshold=0.9] [min_face=24]
        [no_detect=true] [every=N] [out=DIR] [tracking.dir=mlruns | tracking.uri=URL]

(Each key is also a flag: --detector haar, --out DIR, --tracking-dir mlruns, ...)

Faces are found with MTCNN (default; its weights ship in the `mtcnn` wheel, so it works
offline) or OpenCV's Haar cascade, levelled by the eyes, cropped as FER2013 faces are
and resized to the model's input (fer_exp/data/faces.py). One line per face: file, [frame,] box
(x, y, width, height), label, confidence. predictions.csv (one row per face, per sampled
frame for videos) goes to --out, else outputs/predict/<date>; with --out also an annotated
copy of each image and clip, and for each clip a timeline of the class probabilities of
its largest face. --no-detect takes each image or frame as one pre-cropped face. Files
that cannot be read, are not images or videos, have no frames, or (images) show no face
are reported and skipped; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from fer_exp import cli
from fer_exp.data import DETECTORS, LANDMARKS, Face, make_detector

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
SAMPLES_PER_SECOND = 5  # --every's default: about this many analysed frames per second of video


class Predictor:
    """A model, its class names and a face detector (None: the whole image is the face)."""

    def __init__(self, model, classes: list[str], detector=None):
        self.model, self.classes, self.detector = model, classes, detector
        self.size = int(model.input_shape[1])

    def __call__(self, bgr: np.ndarray) -> list[dict]:
        """One dict per face: box, label, confidence, probs, and the detector's Face."""
        from fer_exp.data import to_inputs

        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        if self.detector is None:
            found = [Face((0, 0, gray.shape[1], gray.shape[0]))]
            crops = [cv2.resize(gray, (self.size, self.size), interpolation=cv2.INTER_AREA)]
        else:
            found = self.detector.detect(bgr)
            crops = [self.detector.crop(gray, f, self.size) for f in found]
        if not found:
            return []
        probs = np.asarray(self.model(to_inputs(np.stack(crops)), training=False))
        return [
            {"face": f, "box": f.box, "label": self.classes[int(p.argmax())], "confidence": float(p.max()), "probs": p}
            for f, p in zip(found, probs)
        ]


def list_inputs(items: list[str]) -> list[Path]:
    """Files as given, and every non-hidden file under each folder (sorted)."""
    paths = []
    for item in map(Path, items):
        if item.is_dir():
            paths += sorted(
                p
                for p in item.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(item).parts)
            )
        else:
            paths.append(item)
    return paths


def annotate(image: np.ndarray, faces: list[dict]) -> np.ndarray:
    """A copy of the image with each face's box, landmarks and label drawn on it."""
    out = image.copy()
    scale = max(0.4, min(out.shape[:2]) / 600)
    for f in faces:
        x, y, w, h = f["box"]
        cv2.rectangle(out, (x, y), (x + w, y + h), (0, 200, 0), max(1, round(2 * scale)))
        for px, py in f["face"].landmarks.values():
            cv2.circle(out, (round(px), round(py)), max(1, round(2 * scale)), (0, 200, 255), -1)
        cv2.putText(
            out,
            f"{f['label']} {f['confidence']:.2f}",
            (x, max(12, y - 4)),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (0, 200, 0),
            max(1, round(scale)),
        )
    return out


def csv_header(classes: list[str]) -> list[str]:
    marks = [f"{k}_{axis}" for k in LANDMARKS for axis in "xy"]
    return [
        "path",
        "face",
        "x",
        "y",
        "width",
        "height",
        "label",
        "confidence",
        *classes,
        "detector_confidence",
        *marks,
        "frame",
        "time_s",
    ]


def csv_row(path: Path, i: int, f: dict, frame: int | None = None, seconds: float | None = None) -> list:
    face = f["face"]
    marks = [f"{v:.1f}" for k in LANDMARKS for v in face.landmarks.get(k, ())] or [""] * 2 * len(LANDMARKS)
    det = "" if face.confidence is None else f"{face.confidence:.4f}"
    when = ["" if frame is None else frame, "" if seconds is None else f"{seconds:.3f}"]
    return [
        str(path),
        i,
        *f["box"],
        f["label"],
        f"{f['confidence']:.6f}",
        *(f"{p:.6f}" for p in f["probs"]),
        det,
        *marks,
        *when,
    ]


def face_lines(path: Path, faces: list[dict], where: str = "") -> None:
    for i, f in enumerate(faces, 1):
        tqdm.write(
            f"{path}\t{where}face {i}/{len(faces)}\tbox {','.join(map(str, f['box']))}\t{f['label']}\t{f['confidence']:.3f}"
        )


def predict_image(path: Path, predict: Predictor, annotated: Path | None) -> list[list]:
    """CSV rows of the faces in one image. Raises ValueError for a file that yields no face."""
    if not path.is_file():
        raise ValueError("no such file")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("unreadable or not an image")
    faces = predict(image)
    if not faces:
        raise ValueError("no face found (--no-detect takes the whole image as the face)")
    face_lines(path, faces)
    if annotated:
        cv2.imwrite(str(annotated.with_suffix(".png")), annotate(image, faces))
    return [csv_row(path, i, f) for i, f in enumerate(faces, 1)]


def predict_video(path: Path, predict: Predictor, every: int | None, annotated: Path | None) -> list[list]:
    """CSV rows of the faces in every `every`-th frame of a clip; with `annotated`, an annotated copy
    of the clip (.mp4) and the timeline of its largest face's class probabilities (_timeline.png)."""
    cap = cv2.VideoCapture(str(path))
    if not path.is_file() or not cap.isOpened():
        raise ValueError("cannot be opened as a video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    every = every or max(1, round(fps / SAMPLES_PER_SECOND))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    rows, timeline, writer, faces, n = [], [], None, [], 0
    with tqdm(total=total, desc=path.name, unit="frame", mininterval=1.0) as bar:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if n % every == 0:
                faces = predict(frame)
                face_lines(path, faces, f"frame {n} ({n / fps:.2f} s)\t")
                rows += [csv_row(path, i, f, n, n / fps) for i, f in enumerate(faces, 1)]
                if faces:
                    timeline.append((n / fps, max(faces, key=lambda f: f["box"][2] * f["box"][3])["probs"]))
            if annotated:
                writer = writer or cv2.VideoWriter(
                    str(annotated.with_suffix(".mp4")), cv2.VideoWriter_fourcc(*"mp4v"), fps, frame.shape[1::-1]
                )
                writer.write(annotate(frame, faces))
            n += 1
            bar.update()
    cap.release()
    if writer:
        writer.release()
    if n == 0:
        raise ValueError("no frames (an empty or unsupported video)")
    if annotated and timeline:
        from fer_exp import plots

        times, probs = zip(*timeline)
        title = f"{path.name}: largest face, every {every} frame(s)"
        plots.save(
            plots.probability_timeline(np.array(times), np.stack(probs), predict.classes, title),
            annotated.with_name(f"{annotated.name}_timeline.png"),
        )
    if not rows:
        tqdm.write(f"{path}: no face in {-(-n // every)} sampled frame(s)")
    return rows


def parse_args(argv: list[str]) -> argparse.Namespace:
    # key=value (every command's convention) is the flag: model=X is --model=X, out=DIR --out=DIR
    keys = ("model", "detector", "threshold", "min_face", "no_detect", "every", "out", "tracking.dir", "tracking.uri")
    argv = cli.as_flags(argv, {k: "--" + k.replace(".", "-").replace("_", "-") for k in keys})
    ap = argparse.ArgumentParser(prog="python -m fer_exp.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", action="version", version=f"fer_exp {cli.fer_exp_version()}")
    ap.add_argument("--model", required=True, help="runs:/RUN_ID/model, models:/fer@champion or a .h5/.keras file")
    ap.add_argument("inputs", nargs="+", help="image or video files, or folders of them")
    ap.add_argument("--detector", choices=sorted(DETECTORS), default="mtcnn", help="face detector (default mtcnn)")
    ap.add_argument("--threshold", type=float, default=0.9, help="the smallest MTCNN confidence that counts as a face")
    ap.add_argument("--min-face", type=int, default=24, help="smallest face to find, in pixels")
    ap.add_argument("--no-detect", action="store_true", help="each image or frame is one pre-cropped face")
    ap.add_argument(
        "--every", type=int, help=f"analyse every N-th video frame (default: about {SAMPLES_PER_SECOND} a second)"
    )
    ap.add_argument("--out", type=Path, help="write predictions.csv, annotated copies and video timelines here")
    ap.add_argument("--tracking-dir", default="mlruns", help="local MLflow store for runs:/ and models:/ URIs")
    ap.add_argument("--tracking-uri", help="MLflow server instead of --tracking-dir (default: MLFLOW_TRACKING_URI)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    from fer_exp.models import load_model

    try:
        model, classes = load_model(args.model, args.tracking_uri, args.tracking_dir)
    except Exception as e:  # a wrong path, run id or alias: say so, no traceback
        print(f"error: cannot load model {args.model}: {e}", file=sys.stderr)
        return 2
    predict = Predictor(
        model, classes, None if args.no_detect else make_detector(args.detector, args.min_face, args.threshold)
    )
    out = args.out or Path("outputs/predict") / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    paths = list_inputs(args.inputs)
    rows, failed = [], []
    for n, path in enumerate(tqdm(paths, desc="predict", unit="file", disable=len(paths) < 2)):
        annotated = args.out / f"{n:04d}_{path.stem}" if args.out else None  # numbered: names may repeat across folders
        try:
            video = path.suffix.lower() in VIDEO_SUFFIXES
            rows += (
                predict_video(path, predict, args.every, annotated)
                if video
                else predict_image(path, predict, annotated)
            )
        except ValueError as e:
            failed.append(path)
            tqdm.write(f"{path}: error: {e}", file=sys.stderr)
    with open(out / "predictions.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([csv_header(classes), *rows])
    print(f"predictions.csv{' and annotated copies' if args.out else ''} in {out}")
    print(
        f"{len(paths) - len(failed)} of {len(paths)} file(s) processed, {len(rows)} face(s); {len(failed)} failed",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
