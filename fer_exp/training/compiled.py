"""The model a config describes, compiled: its builder in the chosen precision, the optimizer, the
learning-rate schedule, the loss (with teacher=, the distillation loss) and the metrics."""

from __future__ import annotations

import keras

from fer_exp.models import build_model
from fer_exp.training import machine

OPTIMIZERS = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "sgd": keras.optimizers.SGD}


def make_optimizer(name: str, lr, weight_decay: float = 0.0, ema: bool = False) -> keras.optimizers.Optimizer:
    """adam | adamw | sgd (Nesterov, momentum 0.9); `lr` may be a schedule."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer={name!r} is unknown; choose one of {sorted(OPTIMIZERS)}")
    decay = float(weight_decay) if name == "adamw" else weight_decay or None  # AdamW wants a float, 0.0 for none
    kwargs = {"learning_rate": lr, "weight_decay": decay, "use_ema": ema}
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


@keras.saving.register_keras_serializable(package="fer_exp")
class DistillationLoss(keras.losses.Loss):
    """Hinton et al.'s loss for a student whose targets are [one-hot labels | teacher probabilities]
    (2 x classes wide): (1 - alpha) x cross-entropy on the labels (label_smoothing applies) + alpha x
    T^2 x KL(teacher || student), both distributions softened by temperature T (p -> p^(1/T), renormalised;
    the models output probabilities, whose logarithms are logits up to a constant). Targets of labels
    only (validation) give the cross-entropy alone."""

    def __init__(self, classes: int, alpha: float, temperature: float, label_smoothing: float = 0.0, **kwargs):
        super().__init__(name=kwargs.pop("name", "distillation"), **kwargs)
        self.classes, self.alpha, self.temperature, self.label_smoothing = classes, alpha, temperature, label_smoothing

    def call(self, y_true, y_pred):
        ops, k, t = keras.ops, self.classes, self.temperature
        y_pred = ops.cast(y_pred, "float32")
        hard = keras.losses.categorical_crossentropy(y_true[..., :k], y_pred, label_smoothing=self.label_smoothing)
        if y_true.shape[-1] == k:
            return hard
        eps = keras.config.epsilon()
        student = ops.log_softmax(ops.log(ops.clip(y_pred, eps, 1.0)) / t, axis=-1)
        teacher = ops.log_softmax(ops.log(ops.clip(ops.cast(y_true[..., k:], "float32"), eps, 1.0)) / t, axis=-1)
        soft = ops.sum(ops.exp(teacher) * (teacher - student), axis=-1)
        return (1.0 - self.alpha) * hard + self.alpha * t * t * soft

    def get_config(self) -> dict:
        return {**super().get_config(), "classes": self.classes, "alpha": self.alpha, "temperature": self.temperature,
                "label_smoothing": self.label_smoothing}  # fmt: skip


class _OnLabels:
    """A metric scored on the labels part of [labels | teacher probabilities] targets (and on plain labels)."""

    def __init__(self, classes: int, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true[..., : self.classes], y_pred, sample_weight)

    def get_config(self) -> dict:
        return {**super().get_config(), "classes": self.classes}


@keras.saving.register_keras_serializable(package="fer_exp")
class LabelAccuracy(_OnLabels, keras.metrics.CategoricalAccuracy):
    pass


@keras.saving.register_keras_serializable(package="fer_exp")
class LabelPrecision(_OnLabels, keras.metrics.Precision):
    pass


@keras.saving.register_keras_serializable(package="fer_exp")
class LabelRecall(_OnLabels, keras.metrics.Recall):
    pass


def loss_and_metrics(config: dict, num_classes: int) -> tuple[keras.losses.Loss, list]:
    """Cross-entropy and accuracy, precision, recall; with teacher=, the distillation loss and the same
    metrics read from the labels part of the targets."""
    if config.get("teacher") is None:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=config["label_smoothing"])
        return loss, ["accuracy", keras.metrics.Precision(name="precision"), keras.metrics.Recall(name="recall")]
    distill = config["distill"]
    loss = DistillationLoss(num_classes, distill["alpha"], distill["temperature"], config["label_smoothing"])
    return loss, [
        LabelAccuracy(num_classes, name="accuracy"),
        LabelPrecision(num_classes, name="precision"),
        LabelRecall(num_classes, name="recall"),
    ]


def compile_model(config: dict, num_classes: int, steps_per_epoch: int) -> keras.Model:
    """The model, optimizer, loss and metrics that the resolved config `config` describes."""
    size = int(config["data"]["image_size"])
    keras.mixed_precision.set_global_policy(machine.precision(config["precision"]))
    try:
        model = build_model(input_shape=(size, size, 1), num_classes=num_classes, **config["model"])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    loss, metrics = loss_and_metrics(config, num_classes)
    model.compile(
        optimizer=make_optimizer(
            config["optimizer"], make_lr(config, steps_per_epoch), config["weight_decay"], config["ema"]
        ),
        loss=loss,
        metrics=metrics,
    )
    return model
