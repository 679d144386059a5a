"""Faces in photos and video frames: detect them, level them by the eyes, crop them as FER2013 is cropped.

Two detectors, both offline: MTCNN (the `mtcnn` wheel carries its weights; boxes,
confidences and five landmarks) and OpenCV's Haar cascades (in the opencv-python 4.x
wheel). Crops are gray squares of the model's input size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# FER2013 crops are tight: the face square's side is FER_SIDE x the MTCNN box's larger side, centred
# on the box (measured on FER2013 faces pasted into photos: benchmarks/README.md, "Face crops");
# tests/test_predict.py checks that it frames FER faces better than 0.8x and 1.2x.
FER_SIDE = 0.925
MAX_TILT = 30.0  # degrees; a larger eye-line angle is more likely a wrong eye than a tilted head


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x, y, width, height in the image
    confidence: float | None = None  # the detector's (MTCNN); None for Haar
    landmarks: dict[str, tuple[float, float]] = field(default_factory=dict)  # LANDMARKS -> (x, y), MTCNN only


def level_and_crop(gray: np.ndarray, centre: tuple[float, float], side: float, angle: float, size: int) -> np.ndarray:
    """The side x side square around `centre`, rotated by `angle` degrees (eyes level), as size x size."""
    side_px = max(1, round(side))
    m = cv2.getRotationMatrix2D(centre, angle, 1.0)  # at full resolution, then INTER_AREA: no aliasing
    m[:, 2] += (side_px / 2 - centre[0], side_px / 2 - centre[1])
    square = cv2.warpAffine(gray, m, (side_px, side_px), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)


def eye_angle(left: tuple[float, float], right: tuple[float, float]) -> float:
    """Degrees to rotate so that the eye line is level (0 when the eyes look implausible)."""
    (x1, y1), (x2, y2) = sorted([left, right])
    angle = float(np.degrees(np.arctan2(y2 - y1, x2 - x1)))
    return angle if abs(angle) <= MAX_TILT else 0.0


class MtcnnDetector:
    """MTCNN (the `mtcnn` package): faces with a confidence and five landmarks."""

    name = "mtcnn"

    def __init__(self, min_size: int = 24, threshold: float = 0.9):
        from mtcnn import MTCNN

        self.mtcnn, self.min_size, self.threshold = MTCNN(), min_size, threshold

    def detect(self, bgr: np.ndarray) -> list[Face]:
        """Faces at or above the confidence threshold, left to right."""
        # MTCNN's own min_face_size stays at its default (20): mtcnn 1.0.0 fails inside its image
        # pyramid for some other values (24, 40 on a 640x480 photo) and finds nothing at 30.
        found = self.mtcnn.detect_faces(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        faces = [
            Face(
                tuple(int(v) for v in f["box"]),
                float(f["confidence"]),
                {k: tuple(map(float, f["keypoints"][k])) for k in LANDMARKS},
            )
            for f in found
            if f["confidence"] >= self.threshold and min(f["box"][2:]) >= self.min_size
        ]
        return sorted(faces, key=lambda f: f.box[0])

    def crop(self, gray: np.ndarray, face: Face, size: int) -> np.ndarray:
        x, y, w, h = face.box
        angle = eye_angle(face.landmarks["left_eye"], face.landmarks["right_eye"]) if face.landmarks else 0.0
        return level_and_crop(gray, (x + w / 2, y + h / 2), FER_SIDE * max(w, h), angle, size)


class HaarDetector:
    """OpenCV's Haar cascades for frontal faces, and for eyes to level them."""

    name = "haar"

    def __init__(self, min_size: int = 24, threshold: float = 0.0):
        cascades = Path(cv2.data.haarcascades)
        self.faces = cv2.CascadeClassifier(str(cascades / "haarcascade_frontalface_default.xml"))
        self.eyes = cv2.CascadeClassifier(str(cascades / "haarcascade_eye.xml"))
        if self.faces.empty() or self.eyes.empty():
            raise RuntimeError(f"OpenCV's Haar cascades are missing from {cascades} (opencv-python 4.x ships them)")
        self.min_size = min_size

    def detect(self, bgr: np.ndarray) -> list[Face]:
        """Face boxes, left to right (OpenCV's default settings on the gray image)."""
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if bgr.ndim == 3 else bgr
        found = self.faces.detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(self.min_size, self.min_size)
        )
        return sorted((Face(tuple(int(v) for v in box)) for box in found), key=lambda f: f.box[0])

    def crop(self, gray: np.ndarray, face: Face, size: int) -> np.ndarray:
        x, y, w, h = face.box
        eyes = self.eyes.detectMultiScale(
            gray[y : y + h // 2, x : x + w], scaleFactor=1.1, minNeighbors=5, minSize=(w // 8, w // 8)
        )
        angle = 0.0
        if len(eyes) >= 2:
            centres = [(ex + ew / 2, ey + eh / 2) for ex, ey, ew, eh in sorted(eyes, key=lambda e: -e[2])[:2]]
            angle = eye_angle(*centres)
        return level_and_crop(gray, (x + w / 2, y + h / 2), max(w, h), angle, size)


DETECTORS = {d.name: d for d in (MtcnnDetector, HaarDetector)}


def make_detector(name: str, min_size: int = 24, threshold: float = 0.9):
    if name not in DETECTORS:
        raise ValueError(f"detector {name!r} is unknown; choose one of {sorted(DETECTORS)}")
    return DETECTORS[name](min_size=min_size, threshold=threshold)
