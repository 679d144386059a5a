"""The accuracy and cost levers: VGG and its crop, schedules, TTA, the recipe and fast configs."""

import keras
import mlflow
import numpy as np
import pytest

from fer_exp.models.evaluation import evaluate, make_views


def test_tta_views_are_flips_and_shifted_crops():
    images = np.arange(2 * 48 * 48, dtype=np.uint8).reshape(2, 48, 48)
    views = make_views(images, 10)
    assert len(views) == 10 and all(v.shape == images.shape for v in views)
    np.testing.assert_array_equal(views[0], images)
    np.testing.assert_array_equal(views[1], images[:, :, ::-1])
    np.testing.assert_array_equal(views[2][:, 3:, 3:], images[:, :-3, :-3])  # shifted down-right by 3
    assert len(make_views(images, 2)) == 2
    with pytest.raises(ValueError, match="1..10"):
        make_views(images, 11)


def test_tta_averages_probabilities_over_views():
    # a "model" that answers class 1 for images whose left half is brighter, else class 0
    inputs = keras.Input((48, 48, 1))
    left_minus_right = keras.layers.Lambda(lambda x: keras.ops.mean(x[:, :, :24] - x[:, :, 24:], axis=(1, 2, 3)))(
        inputs
    )
    probs = keras.layers.Lambda(lambda d: keras.ops.stack([d < 0, d > 0], axis=1))(left_minus_right)
    model = keras.Model(inputs, keras.ops.cast(probs, "float32"))
    img = np.zeros((1, 48, 48), np.uint8)
    img[:, :, :24] = 200
    np.testing.assert_allclose(evaluate(model, img, None, ["a", "b"], 1).probs, [[0, 1]])
    ev = evaluate(model, img, np.array([1]), ["a", "b"], 2)
    np.testing.assert_allclose(ev.probs, [[0.5, 0.5]])  # the flip disagrees
    np.testing.assert_allclose(ev.single, [[0, 1]])
    assert ev.accuracy == 1.0 and ev.tta_accuracy == 0.0  # a tie goes to the first class
    assert ev.confusion.tolist() == [[0, 0], [0, 1]] and ev.report["b"]["recall"] == 1.0


def test_vgg_size_and_bf16_policy():
    from fer_exp.models import build_model

    m = build_model("vgg", (48, 48, 1), 7)
    assert m.count_params() == 1_176_359
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        m = build_model("vgg", (48, 48, 1), 7)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert m.layers[1].compute_dtype == "bfloat16" and m.output.dtype == "float32"


def test_cosine_schedule_warms_up_then_decays():
    from fer_exp.training.compiled import make_lr

    c = {"lr_schedule": "cosine", "lr": 1e-2, "warmup_epochs": 1, "epochs": 5}
    lr = make_lr(c, steps_per_epoch=10)
    values = [float(lr(step)) for step in (0, 5, 10, 30, 50)]
    assert values[0] == 0 and values[1] == pytest.approx(5e-3) and values[2] == pytest.approx(1e-2)
    assert values[2] > values[3] > values[4] and values[4] == pytest.approx(0, abs=1e-9)
    assert make_lr({**c, "lr_schedule": "constant"}, 10) == 1e-2
    with pytest.raises(ValueError, match="lr_schedule='step'"):
        make_lr({**c, "lr_schedule": "step"}, 10)


def test_recipe_trains_end_to_end_and_reports_tta(tmp_path, compose):
    from fer_exp.training.job import train

    cfg = compose(
        [
            "experiment=recipe",
            "data=synthetic",
            "data.train_per_class=4",
            "data.val_per_class=2",
            "epochs=2",
            "batch_size=8",
            f"tracking.dir={tmp_path / 'mlruns'}",
        ]
    )
    assert cfg.model.name == "vgg" and cfg.augment.flip == "horizontal" and cfg.ema and cfg.keep_weights == "last"
    result = train(cfg, output_dir=tmp_path / "out")
    run = mlflow.MlflowClient().get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["optimizer"] == "adamw"
    assert 0 <= run.data.metrics["val_accuracy_tta"] <= 1
    lrs = [m.value for m in mlflow.MlflowClient().get_metric_history(result["run_id"], "lr")]
    assert len(lrs) == 2 and lrs[1] < lrs[0]  # cosine decay, logged per epoch
    assert run.data.tags["fer_exp.kept_weights"] == "last epoch 2 (EMA)"
    # precision=auto, and the machine it chose it for, are recorded
    from fer_exp.training import machine

    assert cfg.precision == "auto" and run.data.params["precision"] == "auto"
    assert run.data.tags["fer_exp.machine.precision"] == machine.precision("auto") in ("float32", "mixed_bfloat16")
    assert run.data.tags["fer_exp.machine.cpu"] == machine.cpu()[0] and run.data.tags["fer_exp.machine.onednn"] in (
        "on",
        "off",
    )
    # best_val_accuracy scores the weights kept in model.h5 (the final EMA weights), not a per-epoch value
    from fer_exp.data import synthetic_split
    from fer_exp.models import evaluate

    kept = keras.models.load_model(tmp_path / "out" / "model.h5", compile=False)
    val = synthetic_split(2, list(cfg.data.classes), 48, seed=cfg.seed + 1)
    assert evaluate(kept, val.images, val.labels, list(cfg.data.classes)).accuracy == pytest.approx(
        run.data.metrics["best_val_accuracy"]
    )


def test_fast_costs_under_a_third_of_the_recipes_training_flops(compose):
    """experiment=fast's promise, counted from the models' graphs: FLOPs per image x epochs (same images)."""
    from fer_exp.models import build_model, training_flops

    total = {}
    for name in ("recipe", "fast"):
        cfg = compose([f"experiment={name}"])
        model = build_model(input_shape=(48, 48, 1), num_classes=7, **cfg.model)
        total[name] = training_flops(model)[1] * cfg.epochs
    assert total["fast"] <= total["recipe"] / 3, total


def test_a_sweeps_jobs_count_an_architectures_flops_once(monkeypatch):
    """Two builds of one architecture (their layers named apart) share the count; another width does not."""
    from fer_exp.models import build_model, builders, training_flops

    profiled = []
    monkeypatch.setattr(builders, "_FLOPS", {})
    monkeypatch.setattr(builders, "_profile_flops", lambda model: profiled.append(model) or (1, model.count_params()))
    first, again = build_model("shallow", (48, 48, 1), 7), build_model("shallow", (48, 48, 1), 7)
    assert [layer.name for layer in first.layers] != [layer.name for layer in again.layers]
    assert training_flops(first) == training_flops(again) and profiled == [first]
    wider = build_model("airbench", (48, 48, 1), 7, widths=[64, 128, 256])
    narrower = build_model("airbench", (48, 48, 1), 7, widths=[48, 96, 192])
    assert training_flops(wider) != training_flops(narrower) and profiled == [first, wider, narrower]


def test_vgg_crop_sees_the_central_crop_of_whole_faces():
    from fer_exp.models import build_model

    plain, cropped = build_model("vgg", (48, 48, 1), 7), build_model("vgg", (48, 48, 1), 7, crop=40)
    assert cropped.input_shape == (None, 48, 48, 1) and cropped.count_params() == plain.count_params()
    conv = next(layer for layer in cropped.layers if isinstance(layer, keras.layers.Conv2D))
    assert conv.output.shape[1:3] == (40, 40)
    # the border outside the central 40 px does not change the prediction
    faces = np.random.default_rng(0).random((2, 48, 48, 1), dtype=np.float32)
    bordered = faces.copy()
    bordered[:, :4], bordered[:, -4:], bordered[:, :, :4], bordered[:, :, -4:] = 0, 1, 0, 1
    np.testing.assert_allclose(cropped.predict(faces, verbose=0), cropped.predict(bordered, verbose=0), atol=1e-6)
