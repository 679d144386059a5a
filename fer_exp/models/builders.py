"""Model builders: plain arguments in, an uncompiled functional keras.Model out; and the
class names that travel with a trained model.

`conf/model/<name>.yaml` picks a builder from MODELS by its `name` key; the
other keys are the builder's keyword arguments.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import keras
from keras import layers

from fer_exp.models.layers import WHITEN
from fer_exp.models.layers import batch_norm as norm

log = logging.getLogger(__name__)


def _conv_blocks(x, filters: list[int], bn_momentum: float = 0.99):
    # The notebooks' block order: Conv -> BatchNorm -> MaxPool -> ReLU, valid padding.
    for f in filters:
        x = layers.Conv2D(f, 3, padding="valid")(x)
        x = layers.BatchNormalization(momentum=bn_momentum)(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Activation("relu")(x)
    return x


def notebook_cnn(
    input_shape,
    num_classes: int,
    filters: list[int],
    dense: int = 128,
    dropout: float = 0.5,
    name: str = "cnn",
    bn_momentum: float = 0.99,
) -> keras.Model:
    """The improved notebook's CNN: conv blocks, Flatten, Dense, Dropout, softmax.

    bn_momentum: of BatchNormalization's moving statistics, which validation uses; Keras's 0.99
    (the notebook's) needs a few hundred steps before they fit, so short runs validate at chance.
    """
    inputs = keras.Input(input_shape)
    x = _conv_blocks(inputs, filters, bn_momentum)
    x = layers.Flatten()(x)
    x = layers.Dense(dense, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def deep(
    input_shape,
    num_classes: int,
    filters=(128, 256, 128),
    dense: int = 128,
    dropout: float = 0.5,
    bn_momentum: float = 0.99,
) -> keras.Model:
    """3 conv blocks 128/256/128 + Dense 128: 856,711 parameters at 48x48x1, 7 classes."""
    return notebook_cnn(input_shape, num_classes, list(filters), dense, dropout, name="deep", bn_momentum=bn_momentum)


def shallow(
    input_shape, num_classes: int, filters=(32, 64), dense: int = 128, dropout: float = 0.5, bn_momentum: float = 0.99
) -> keras.Model:
    """The notebook's "variation 2": 2 conv blocks 32/64 + Dense 128."""
    return notebook_cnn(
        input_shape, num_classes, list(filters), dense, dropout, name="shallow", bn_momentum=bn_momentum
    )


def efficientnet_b2(input_shape, num_classes: int, dropout: float = 0.5) -> keras.Model:
    """EfficientNetB2 from keras.applications, random init, on 1-channel input."""
    inputs = keras.Input(input_shape)
    # The backbone rescales by 1/255 itself; our inputs are already in [0, 1].
    x = layers.Rescaling(255.0)(inputs)
    backbone = keras.applications.EfficientNetB2(
        include_top=False, weights=None, input_shape=tuple(input_shape), pooling="avg"
    )
    x = backbone(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="efficientnet_b2")


def vgg(
    input_shape,
    num_classes: int,
    filters=(32, 64, 128, 256),
    convs: int = 2,
    dropout: float = 0.5,
    block_dropout: float = 0.0,
    crop: int | None = None,
    batch_norm: str = "keras",
) -> keras.Model:
    """VGG-style: per block `convs` x (3x3 same Conv -> BN -> ReLU), MaxPool; then GAP, Dropout, softmax.

    Sized for a CPU: 32/64/128/256 with 2 convs a block is 1.18M parameters.
    crop: the convs see only the central crop x crop pixels (Keras's CenterCrop, in training and
    inference alike). The model still takes whole faces, so evaluate, predict and ensembles need
    nothing else; training gets random crops from the augmenter's shifts, and TTA's shifted views
    make its ten-crop test. A crop of c px costs about (c/48)^2 of the convs' FLOPs.
    batch_norm: keras (Keras's own layer) | fused (TensorFlow's one-op kernel, FusedBatchNormalization).
    """
    inputs = keras.Input(input_shape)
    x = layers.CenterCrop(crop, crop)(inputs) if crop else inputs
    for f in filters:
        for _ in range(convs):
            x = layers.Conv2D(f, 3, padding="same", use_bias=False)(x)
            x = norm(batch_norm)(x)
            x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(2)(x)
        if block_dropout:
            x = layers.Dropout(block_dropout)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    # float32 softmax: stable under the mixed_bfloat16 policy
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="vgg")


def airbench(
    input_shape,
    num_classes: int,
    widths=(32, 64, 128),
    stem: str = "whiten",
    stem_width: int = 32,
    crop: int | None = 44,
    activation: str = "relu",
    batch_norm: str = "fused",
    bn_momentum: float = 0.9,
    dropout: float = 0.0,
    dirac: bool = False,
) -> keras.Model:
    """airbench's network (Keller Jordan's CIFAR-10 speedruns), for one gray channel.

    A stem, then per width a block: Conv (same) -> MaxPool -> BN -> act -> Conv -> BN -> act (the first
    conv of a block runs before the pooling, the second after); a global max pool, Dense, softmax.
    stem: whiten, a frozen 3x3 valid convolution whitening the image patches (18 filters, set from the
    training images before the first epoch: fer_exp.models.layers.whitening_weights); conv, a trained
    3x3 valid convolution of stem_width filters with BN. crop: as vgg's. batch_norm: fused | keras.
    dirac: airbench's identity initialisation: each trained conv's first filters pass their input through.
    """
    inputs = keras.Input(input_shape)
    x = layers.CenterCrop(crop, crop)(inputs) if crop else inputs
    if stem == "whiten":
        x = layers.Conv2D(18, 3, padding="valid", use_bias=False, trainable=False, name=WHITEN)(x)
    elif stem == "conv":
        x = layers.Conv2D(stem_width, 3, padding="valid", use_bias=False)(x)
        x = norm(batch_norm, momentum=bn_momentum)(x)
    else:
        raise ValueError(f"model.stem={stem!r}: use whiten or conv")
    x = layers.Activation(activation)(x)
    for width in widths:
        x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.MaxPooling2D(2)(x)
        x = norm(batch_norm, momentum=bn_momentum)(x)
        x = layers.Activation(activation)(x)
        x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = norm(batch_norm, momentum=bn_momentum)(x)
        x = layers.Activation(activation)(x)
    x = layers.GlobalMaxPooling2D()(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name="airbench")
    if dirac:
        for conv in (layer for layer in model.layers if isinstance(layer, layers.Conv2D) and layer.trainable):
            kernel = keras.ops.convert_to_numpy(conv.kernel)
            n = min(kernel.shape[2:])
            kernel[..., :n] = 0.0
            kernel[1, 1, range(n), range(n)] = 1.0
            conv.kernel.assign(kernel)
    return model


MODELS: dict[str, Callable[..., keras.Model]] = {f.__name__: f for f in (deep, shallow, efficientnet_b2, vgg, airbench)}


def build_model(name: str, input_shape, num_classes: int, **kwargs) -> keras.Model:
    """Look up `name` in MODELS and build it."""
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is unknown; choose one of {sorted(MODELS)}")
    return MODELS[name](tuple(input_shape), num_classes, **kwargs)


def training_flops(model: keras.Model) -> tuple[int, int]:
    """(forward, training) floating-point operations per image, counted by TensorFlow's profiler on
    the graphs of one forward pass and of one forward + backward pass (the gradients of every weight).

    Optimizer and EMA updates (a few per weight, per batch) are left out; they are under 0.1% here.
    Counted once per architecture in a process: a sweep's jobs that differ in other settings reuse it.
    """
    key = architecture(model)
    if key not in _FLOPS:
        _FLOPS[key] = _profile_flops(model)
    return _FLOPS[key]


_FLOPS: dict[str, tuple[int, int]] = {}


def architecture(model: keras.Model) -> str:
    """model.to_json() with every layer name replaced by its order of appearance: two builds of one
    architecture give the same text (Keras numbers their layers apart: conv2d, conv2d_1, ...)."""
    text = model.to_json()
    order: dict[str, str] = {}
    for name in re.findall(r'"name": "([^"]*)"', text):
        order.setdefault(name, f"#{len(order)}")
    return re.sub(r'"([^"]*)"', lambda m: f'"{order.get(m.group(1), m.group(1))}"', text)


def _profile_flops(model: keras.Model) -> tuple[int, int]:
    import tensorflow as tf

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = keras.losses.categorical_crossentropy(y, model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)

    counts = []
    for fn in (lambda x, y: model(x, training=False), step):
        graph = (
            tf.function(fn)
            .get_concrete_function(
                tf.TensorSpec((1, *model.input_shape[1:])), tf.TensorSpec((1, model.output_shape[-1]))
            )
            .graph
        )
        options = {**tf.compat.v1.profiler.ProfileOptionBuilder.float_operation(), "output": "none"}
        level = tf.get_logger().level
        tf.get_logger().setLevel("ERROR")  # the v1 profiler warns that it is a v1 API at every call
        try:
            counts.append(tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops)
        finally:
            tf.get_logger().setLevel(level)
    return counts[0], counts[1]


# --- the labels of a trained model ------------------------------------------------------
