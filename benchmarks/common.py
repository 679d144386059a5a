"""What the benchmark sections share: the model configs they time, a table row, timed training steps."""

from __future__ import annotations

import time
from pathlib import Path

import keras
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fer_exp.config import conf_dir

ROOT = Path(__file__).resolve().parents[1]
# (name, overrides): each model config; the ratio pipeline/in-memory is the target for deep, shallow, recipe.
MODEL_CONFIGS = {
    "shallow": ["model=shallow"],
    "deep": ["model=deep"],
    "recipe": ["experiment=recipe"],
    "recipe-fused": ["experiment=recipe", "+model.batch_norm=fused"],  # whether the recipe should fuse its BN
    "fast": ["experiment=fast"],
    "vgg": ["model=vgg"],
    "efficientnet_b2": ["model=efficientnet_b2"],
    "speedrun": ["experiment=speedrun"],
}
# The speedrun's ablation (benchmarks/README.md, "Speedrun"): each row the one before it plus one lever;
# the `speedrun` section times their training steps. Levers that change no speed (epochs, label
# smoothing, ...) are rows of the accuracy table only.
# speedrun before its batch and augmentation levers: batches of 256, the recipe's augmentation
SPEEDRUN0 = ["experiment=speedrun", "batch_size=256", "augment.rotation=10", "augment.zoom=0.1", "augment.erasing=0.5"]
AIR32 = [*SPEEDRUN0, "model.widths=[32,64,128]"]
SPEEDRUN_ROWS = {
    "fast, 12 epochs": ["experiment=fast", "epochs=12"],
    "fast, fused batch norm": ["experiment=fast", "epochs=12", "+model.batch_norm=fused"],
    "fast, widths 32..256, fused": [
        "experiment=fast",
        "epochs=12",
        "+model.batch_norm=fused",
        "model.filters=[32,64,128,256]",
    ],
    "airbench 32/64/128, conv stem, GELU, Keras BN": [
        *AIR32,
        "model.stem=conv",
        "model.activation=gelu",
        "model.batch_norm=keras",
    ],
    "+ fused batch norm": [*AIR32, "model.stem=conv", "model.activation=gelu"],
    "+ ReLU": [*AIR32, "model.stem=conv"],
    "+ whitening stem": AIR32,
    "+ widths 48/96/192": SPEEDRUN0,
    "+ no random erasing": [*SPEEDRUN0, "augment.erasing=0"],
    "+ batches of 128": [*SPEEDRUN0, "augment.erasing=0", "batch_size=128"],
    "+ no rotation or zoom (= speedrun)": ["experiment=speedrun"],
    "speedrun, widths 64/128/256": ["experiment=speedrun", "model.widths=[64,128,256]"],
}


def config(*overrides: str) -> dict:
    """The resolved config `python -m fer_exp.run <overrides>` would train (without this machine's conf/local/)."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=["~local", *overrides]), resolve=True)


def row(results: dict, section: str, name: str, value, unit: str = "", note: str = "") -> None:
    """Record one figure and print it as a table row."""
    results.setdefault(section, {})[name] = {"value": value, "unit": unit, **({"note": note} if note else {})}
    shown = (
        f"{value:,.{0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 3}f}"
        if isinstance(value, float)
        else str(value)
    )
    print(f"  {section:<9}  {name:<44} {shown:>12} {unit:<9} {note}", flush=True)


def pipeline_rate(batches, n: int) -> float:
    """images/s delivered by an iterator of (x, y) batches, over n batches after 3 warm-up ones."""
    it = iter(batches)
    for _ in range(3):
        next(it)
    start, images = time.perf_counter(), 0
    for _ in range(n):
        images += len(next(it)[0])
    return images / (time.perf_counter() - start)


class Clock(keras.callbacks.Callback):
    """Times batches after `warm` warm-up ones; stops after `steps` timed batches or `budget` seconds."""

    def __init__(self, warm: int, budget: float, steps: int | None = None):
        super().__init__()
        self.warm, self.budget, self.steps, self.times, self.cpu = warm, budget, steps, [], []

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())
        timed = len(self.times) - self.warm
        if timed > 0 and (
            timed == self.steps or (self.steps is None and self.times[-1] - self.times[self.warm - 1] >= self.budget)
        ):
            self.model.stop_training = True

    def per_step(self) -> tuple[float, float, int]:
        """(wall seconds, CPU seconds of this process, steps timed) per step."""
        timed = len(self.times) - self.warm
        return (
            (self.times[-1] - self.times[self.warm - 1]) / timed,
            (self.cpu[-1] - self.cpu[self.warm - 1]) / timed,
            timed,
        )


def step_time(model, ds, budget: float, steps: int | None = None, warm: int = 3) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, steps timed) per training step of `model.fit` on `ds`."""
    clock = Clock(warm, budget, steps)
    model.fit(ds, epochs=1, steps_per_epoch=warm + (steps or 100_000), verbose=0, shuffle=False, callbacks=[clock])
    return clock.per_step()
