"""The model a config describes, compiled: its builder in the chosen precision, the optimizer, the
learning-rate schedule, the loss and the metrics."""

from __future__ import annotations

import keras

from fer_exp.models import build_model
from fer_exp.training import machine

OPTIMIZERS = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "sgd": keras.optimizers.SGD}


def make_optimizer(name: str, lr, weight_decay: float = 0.0, ema: bool = False) -> keras.optimizers.Optimizer:
    """adam | adamw | sgd (Nesterov, momentum 0.9); `lr` may be a schedule."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer={name!r} is unknown; choose one of {sorted(OPTIMIZERS)}")
    kwargs = {"learning_rate": lr, "weight_decay": weight_decay or None, "use_ema": ema}
    if name == "sgd":
        kwargs.update(momentum=0.9, nesterov=True)
    return OPTIMIZERS[name](**kwargs)


def make_lr(config: dict, steps_per_epoch: int):
    """The learning rate: a constant, or cosine decay to 0 after a linear warm-up."""
    if config["lr_schedule"] == "constant":
        return config["lr"]
    if config["lr_schedule"] != "cosine":
        raise ValueError(f"lr_schedule={config['lr_schedule']!r} is unknown; choose constant or cosine")
    warmup = int(config["warmup_epochs"] * steps_per_epoch)
    decay = max(1, config["epochs"] * steps_per_epoch - warmup)
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(config["lr"], decay)
    return keras.optimizers.schedules.CosineDecay(0.0, decay, warmup_target=config["lr"], warmup_steps=warmup)


def compile_model(config: dict, num_classes: int, steps_per_epoch: int) -> keras.Model:
    """The model, optimizer, loss and metrics that the resolved config `config` describes."""
    size = int(config["data"]["image_size"])
    keras.mixed_precision.set_global_policy(machine.precision(config["precision"]))
    try:
        model = build_model(input_shape=(size, size, 1), num_classes=num_classes, **config["model"])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.compile(
        optimizer=make_optimizer(
            config["optimizer"], make_lr(config, steps_per_epoch), config["weight_decay"], config["ema"]
        ),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config["label_smoothing"]),
        metrics=["accuracy", keras.metrics.Precision(name="precision"), keras.metrics.Recall(name="recall")],
    )
    return model
