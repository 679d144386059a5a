"""experiment=speedrun's parts: fused batch norm, the Keras-only copy that gets logged, the whitening
stem, the airbench network; and a tiny speedrun end to end."""

import keras
import mlflow
import numpy as np
import pytest

from fer_exp.models.layers import FusedBatchNormalization, portable, whitening_weights


def test_fused_batch_norm_computes_what_keras_batch_norm_does():
    x = np.random.default_rng(0).normal(2.0, 3.0, (16, 6, 6, 32)).astype("float32")
    ours, theirs = FusedBatchNormalization(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
    ours.build(x.shape), theirs.build(x.shape)
    gamma, beta = np.linspace(0.5, 2, 32, dtype="float32"), np.linspace(-1, 1, 32, dtype="float32")
    for layer in (ours, theirs):
        layer.gamma.assign(gamma), layer.beta.assign(beta)
    # training: the batch's own statistics; both layers move their averages towards them
    np.testing.assert_allclose(ours(x, training=True), theirs(x, training=True), atol=1e-4)
    np.testing.assert_allclose(ours.moving_mean.numpy(), theirs.moving_mean.numpy(), rtol=1e-5)
    assert ours.moving_mean.numpy() == pytest.approx(0.1 * x.mean(axis=(0, 1, 2)), rel=1e-4)
    n = 16 * 6 * 6  # the fused kernel moves the variance with the unbiased batch variance
    np.testing.assert_allclose(
        ours.moving_variance.numpy() - 0.9, (theirs.moving_variance.numpy() - 0.9) * n / (n - 1), rtol=1e-4
    )
    # inference: the moving statistics
    theirs.moving_variance.assign(ours.moving_variance)
    np.testing.assert_allclose(ours(x, training=False), theirs(x, training=False), atol=1e-4)
    with pytest.raises(ValueError, match="NHWC"):
        FusedBatchNormalization()(np.zeros((2, 3), "float32"))


def test_the_logged_copy_has_keras_layers_only_and_the_same_predictions(tmp_path):
    from fer_exp.models import build_model

    model = build_model("airbench", (48, 48, 1), 7, stem="conv")
    assert sum(isinstance(layer, FusedBatchNormalization) for layer in model.layers) == 7
    x = np.random.default_rng(1).random((4, 48, 48, 1), dtype=np.float32)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    model.fit(x, keras.utils.to_categorical([0, 1, 2, 3], 7), epochs=1, verbose=0)  # moving stats away from 0/1
    twin = portable(model)
    assert not any(isinstance(layer, FusedBatchNormalization) for layer in twin.layers)
    assert "fer_exp" not in twin.to_json()  # a process without fer_exp (mlflow models serve) can load it
    np.testing.assert_allclose(twin.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    assert portable(twin) is twin


def test_the_logged_copy_of_a_distilled_model_drops_its_loss():
    from fer_exp.models import build_model
    from fer_exp.training.compiled import DistillationLoss

    for name, kept in (("shallow", True), ("airbench", False)):  # airbench's fused batch norm is replaced
        model = build_model(name, (48, 48, 1), 7)
        model.compile(optimizer="sgd", loss=DistillationLoss(7, 0.5, 4.0))
        twin = portable(model)  # fer_exp's loss in its compile config would stop `mlflow models serve` loading it
        assert not twin.compiled and (twin.layers == model.layers) == kept
        assert "fer_exp" not in twin.to_json() and portable(twin) is twin


def test_the_whitening_stem_decorrelates_image_patches():
    rng = np.random.default_rng(2)
    images = (rng.random((64, 20, 20)) * 60 + np.linspace(0, 180, 20)).astype(np.uint8)  # correlated neighbours
    kernel = whitening_weights(images, 3)
    assert kernel.shape == (3, 3, 1, 18)
    patches = np.lib.stride_tricks.sliding_window_view(images / 255.0, (3, 3), axis=(1, 2)).reshape(-1, 9)
    out = (patches - patches.mean(axis=0)) @ kernel.reshape(9, 18)[:, :9]
    covariance = np.cov(out, rowvar=False)
    np.testing.assert_allclose(covariance - np.diag(np.diag(covariance)), 0, atol=0.02)  # uncorrelated
    assert all(0.85 < v <= 1.0 for v in np.diag(covariance))  # unit variance (eps keeps it a little under)
    np.testing.assert_allclose(kernel[..., 9:], -kernel[..., :9])


def test_dirac_initialisation_passes_each_convs_input_through_its_first_filters():
    from fer_exp.models import build_model

    def convs(model):
        return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and layer.trainable]

    dirac = convs(build_model("airbench", (48, 48, 1), 7, widths=(16, 32), dirac=True))
    assert [conv.kernel.shape[2:] for conv in dirac] == [(18, 16), (16, 16), (16, 32), (32, 32)]
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 32)).astype("float32")
    for conv in dirac:
        n = min(conv.kernel.shape[2:])
        y = keras.ops.convert_to_numpy(conv(x[..., : conv.kernel.shape[2]]))
        np.testing.assert_allclose(y[..., :n], x[..., :n], atol=1e-6)
    assert np.abs(keras.ops.convert_to_numpy(dirac[2].kernel)[..., 16:]).sum() > 0  # the others stay random
    plain = convs(build_model("airbench", (48, 48, 1), 7, widths=(16, 32)))  # off by default
    assert all(np.abs(keras.ops.convert_to_numpy(conv.kernel)).max() < 0.5 for conv in plain)


@pytest.mark.parametrize("keep", ["last", "best"])
def test_a_tiny_speedrun_trains_whitened_and_logs_a_keras_only_model(tmp_path, compose, keep):
    from fer_exp.training.job import train

    cfg = compose(["experiment=speedrun", "debug=tiny", "epochs=2", f"tracking.dir={tmp_path / 'mlruns'}"])
    assert cfg.model.name == "airbench" and cfg.model.stem == "whiten" and cfg.model.batch_norm == "fused"
    assert cfg.keep_weights == "last" and cfg.early_stopping.patience == 0  # validation does not steer it
    cfg.keep_weights = keep  # best: the checkpoint's model.h5, saved during training with the fused layers
    result = train(cfg, output_dir=tmp_path / "out")
    client = mlflow.MlflowClient()
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["epochs_run"] == 2
    kept = keras.models.load_model(tmp_path / "out" / "model.h5", compile=False)
    stem = kept.get_layer("whiten")
    kernel = stem.kernel.numpy()  # set from the images (eigenvectors and their negatives), then not trained
    assert not stem.trainable and np.abs(kernel).sum() > 0 and np.allclose(kernel[..., 9:], -kernel[..., :9])
    # what it saved and logged has Keras's own layers only: `mlflow models serve` loads it without fer_exp
    logged = mlflow.keras.load_model(f"runs:/{result['run_id']}/model")
    for model in (kept, logged):
        assert not any(isinstance(layer, FusedBatchNormalization) for layer in model.layers)
        assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
