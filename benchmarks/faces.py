"""fer_exp.predict's face detectors (mtcnn, haar) on FER2013 validation faces pasted into photos:
time per photo, faces found, accuracy on the crops, and what they miss."""

from __future__ import annotations

import time

import cv2
import numpy as np
from common import row
from inference import best_model

from fer_exp.data import Split, to_inputs


def pasted(face: np.ndarray, size: int = 160, angle: float = 0.0) -> np.ndarray:
    """A 640x480 colour photo (gradient background) with the face enlarged to `size` px, turned by
    `angle` degrees, in its centre."""
    photo = np.repeat(np.linspace(40, 200, 640, dtype=np.uint8)[None, :], 480, axis=0)
    big = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC)
    x, y = 320 - size // 2, 240 - size // 2
    photo[y : y + size, x : x + size] = big
    if angle:
        turn = cv2.getRotationMatrix2D((320, 240), angle, 1.0)
        photo = cv2.warpAffine(photo, turn, (640, 480), borderMode=cv2.BORDER_REPLICATE)
    return cv2.cvtColor(photo, cv2.COLOR_GRAY2BGR)


def central_face(found: list):
    """The detected face nearest the photo's centre (where the pasted face is), or None."""
    return min(
        found, key=lambda f: abs(f.box[0] + f.box[2] / 2 - 320) + abs(f.box[1] + f.box[3] / 2 - 240), default=None
    )


def bench_faces(results: dict, val: Split, model_uri: str | None, per_class: int = 10) -> None:
    from fer_exp.data import make_detector

    rng = np.random.default_rng(0)
    picks = np.concatenate(
        [rng.choice(np.flatnonzero(val.labels == c), per_class, replace=False) for c in np.unique(val.labels)]
    )
    found_model = best_model(model_uri)
    for name in ("mtcnn", "haar"):
        detector, times, crops, kept, framing = make_detector(name), [], [], [], []
        for i in picks:
            photo = pasted(val.images[i])
            start = time.perf_counter()
            face = central_face(detector.detect(photo))
            times.append(time.perf_counter() - start)
            if face is not None:
                crops.append(detector.crop(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), face, 48))
                kept.append(i)
                framing.append(160 / max(face.box[2:]))
        row(results, "faces", f"{name}: detection per 640x480 photo", 1000 * float(np.median(times)), "ms", "median")
        row(
            results,
            "faces",
            f"{name}: FER2013 faces found, pasted at 160 px",
            len(kept) / len(picks),
            "",
            f"{len(kept)} of {len(picks)}, {per_class} a class",
        )
        p10, p50, p90 = np.percentile(framing, [10, 50, 90]) if framing else (0, 0, 0)
        row(
            results,
            "faces",
            f"{name}: FER2013 crop side / box side",
            float(p50),
            "",
            f"median; p10 {p10:.2f}, p90 {p90:.2f} (faces.FER_SIDE for mtcnn)",
        )
        if found_model and kept:
            label, model = found_model
            on_crops = (to_inputs(np.stack(crops)), val.labels[kept])
            on_originals = (to_inputs(val.images[kept]), val.labels[kept])
            acc = [
                float((np.asarray(model.predict(x, verbose=0)).argmax(1) == y).mean())
                for x, y in (on_crops, on_originals)
            ]
            row(
                results,
                "faces",
                f"{name}: accuracy on the detected crops",
                acc[0],
                "",
                f"{acc[1]:.3f} on the same faces' 48x48 originals; {label}",
            )
        for size in (24, 32, 48, 96):
            hits = sum(
                central_face(detector.detect(pasted(val.images[i], size))) is not None for i in picks[:: per_class // 2]
            )
            row(
                results,
                "faces",
                f"{name}: found at {size} px",
                hits / len(picks[:: per_class // 2]),
                "",
                f"{hits} of {len(picks[:: per_class // 2])}",
            )
        for angle in (20, 40, 60):
            hits = sum(
                central_face(detector.detect(pasted(val.images[i], 160, angle))) is not None
                for i in picks[:: per_class // 2]
            )
            row(
                results,
                "faces",
                f"{name}: found turned {angle} degrees in-plane",
                hits / len(picks[:: per_class // 2]),
                "",
                f"{hits} of {len(picks[:: per_class // 2])}",
            )
