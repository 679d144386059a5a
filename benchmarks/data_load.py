"""Cold decode vs cached load of a class-folder data set (default ../shared/fer2013).

    python benchmarks/data_load.py [ROOT]

Decodes into a fresh temporary cache, then loads again from it; prints both times.
"""

import sys
import tempfile
import time
from pathlib import Path

from fer_exp.data import DEFAULT_ROOT, load_folder_split

CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def main(root: Path) -> None:
    with tempfile.TemporaryDirectory() as cache:
        for label in ("cold decode", "cached load"):
            start, n = time.perf_counter(), 0
            for split in ("train", "validation"):
                n += len(load_folder_split(root, split, CLASSES, 48, cache_dir=cache))
            seconds = time.perf_counter() - start
            print(f"{label}: {n} images in {seconds:.2f} s ({n / seconds:,.0f} images/s)", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_ROOT)
