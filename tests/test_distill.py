"""Distillation (teacher=): the loss, the teachers' probabilities in the pipeline, a student's lineage
and its reproduction, and the teachers that cannot teach (exit 2, nothing written)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from helpers.runner import ROOT, run_cli, store, user_env

slow = pytest.mark.slow
# what `mlflow models serve` does with a run's model, in a process that never imports fer_exp
LOAD_WITHOUT_FER_EXP = """
import sys, mlflow
mlflow.set_tracking_uri(sys.argv[1])
mlflow.pyfunc.load_model(sys.argv[2])
print("fer_exp imported:", any(name.startswith("fer_exp") for name in sys.modules))
"""
CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def softened(p, t):
    q = p ** (1 / t)
    return q / q.sum(axis=1, keepdims=True)


def test_with_alpha_1_the_loss_is_t_squared_times_the_kl_divergence_to_the_teacher():
    from fer_exp.training.compiled import DistillationLoss

    student = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32)
    teacher = np.array([[0.5, 0.4, 0.1], [0.2, 0.2, 0.6]], np.float32)
    labels = np.eye(3, dtype=np.float32)[[0, 2]]
    targets = np.concatenate([labels, teacher], axis=1)
    t = 2.0
    qt, qs = softened(teacher, t), softened(student, t)
    kl = (qt * np.log(qt / qs)).sum(axis=1).mean()
    assert float(DistillationLoss(3, 1.0, t)(targets, student)) == pytest.approx(t * t * kl, rel=1e-4)
    cross_entropy = -np.log(student[[0, 1], [0, 2]]).mean()
    assert float(DistillationLoss(3, 0.0, t)(targets, student)) == pytest.approx(cross_entropy, rel=1e-4)
    assert float(DistillationLoss(3, 0.5, t)(targets, student)) == pytest.approx(0.5 * cross_entropy + 0.5 * t * t * kl,
                                                                                 rel=1e-4)  # fmt: skip
    # validation batches carry labels only: the cross-entropy alone
    assert float(DistillationLoss(3, 1.0, t)(labels, student)) == pytest.approx(cross_entropy, rel=1e-4)


def test_each_image_keeps_its_teacher_probabilities_through_the_shuffled_pipeline():
    from fer_exp.data.pipeline import make_dataset

    n, k = 40, 7
    images = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None], 4, axis=1).repeat(4, axis=2)  # pixel value = index
    labels = np.arange(n) % k
    soft = np.eye(k, dtype=np.float32)[(np.arange(n) + 1) % k]
    seen = 0
    for x, y in make_dataset(images, labels, k, 8, training=True, seed=3, soft=soft):
        assert y.shape[1] == 2 * k
        for xi, yi in zip(x.numpy(), y.numpy()):
            i = round(float(xi[0, 0, 0]) * 255)
            assert yi[:k].argmax() == labels[i] and yi[k:].argmax() == (i + 1) % k
            seen += 1
    assert seen == n


def test_online_teachers_see_the_very_augmented_views_the_student_learns_from():
    import keras

    from fer_exp.data.augment import build_augmenter
    from fer_exp.data.pipeline import make_dataset, to_inputs
    from fer_exp.training.teachers import online

    keras.utils.set_random_seed(0)
    k = 7
    teacher = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(k, "softmax")])
    images = np.random.default_rng(1).integers(0, 256, (24, 8, 8), dtype=np.uint8)
    clean = teacher.predict(to_inputs(images), verbose=0)
    augmenter = build_augmenter(shift=0.25, flip="horizontal", erasing=0.5, seed=1)
    seen = []
    for x, y in make_dataset(images, np.arange(24) % k, k, 8, augmenter, True, seed=2, teacher=online([teacher])):
        np.testing.assert_allclose(y.numpy()[:, k:], teacher.predict(x, verbose=0), atol=1e-5)
        seen.extend(y.numpy()[:, k:])
    # the targets are of the augmented views, not of the clean images
    assert len(seen) == 24 and not all(np.abs(clean - row).sum(axis=1).min() < 1e-5 for row in seen)


def test_a_sweep_of_students_computes_its_teachers_probabilities_once(tmp_path, monkeypatch):
    from fer_exp.training import teachers

    computed = []

    def probabilities(models, images, views, verbose=0):
        computed.append(views)
        return np.full((len(images), 7), views / 7, np.float32)

    monkeypatch.setattr(teachers, "probabilities", probabilities)
    images = np.random.default_rng(0).integers(0, 256, (30, 8, 8), dtype=np.uint8)
    a = [teachers.Teacher("a", tmp_path / "a.h5", CLASSES, "1" * 64)]
    first = teachers.cached_probabilities(a, [], images, 2, str(tmp_path / "cache"))
    again = teachers.cached_probabilities(a, [], images, 2, str(tmp_path / "cache"))
    assert computed == [2] and np.array_equal(first, again)
    # another teacher's file, other views, other images, no cache: computed anew
    b = [teachers.Teacher("a", tmp_path / "a.h5", CLASSES, "2" * 64)]
    teachers.cached_probabilities(b, [], images, 2, str(tmp_path / "cache"))
    assert teachers.cached_probabilities(a, [], images, 3, str(tmp_path / "cache"))[0, 0] == pytest.approx(3 / 7)
    teachers.cached_probabilities(a, [], images[::-1], 2, str(tmp_path / "cache"))
    teachers.cached_probabilities(a, [], images, 2, None)
    assert computed == [2, 2, 3, 2, 2]
    assert len(list((tmp_path / "cache").iterdir())) == 4  # no temporary file left behind


def test_compare_says_what_a_run_was_distilled_from():
    from fer_exp.sweeps.results import job_rows, table
    from fer_exp.tracking import TAG_DISTILLED_FROM

    def job(run_id, value, tags):
        return {"run_id": run_id, "name": run_id, "status": "FINISHED", "start": 0, "end": 60000, "history": [],
                "metrics": {"best_val_accuracy": value}, "params": {}, "tags": tags}  # fmt: skip

    rows = job_rows([job("a" * 32, 0.5, {}), job("b" * 32, 0.6, {TAG_DISTILLED_FROM: "ensemble of 3 runs (run 1234abcd)"})],
                    "best_val_accuracy")  # fmt: skip
    assert table(rows, "best_val_accuracy").splitlines()[-1] == "#1 distilled from ensemble of 3 runs (run 1234abcd)"


def command(tmp_path, module, *args):
    return subprocess.run(
        [sys.executable, "-m", f"fer_exp.{module}", *args, f"tracking.dir={tmp_path / 'mlruns'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=user_env(),
    )


@slow
def test_a_student_records_its_teachers_reproduces_identically_and_refuses_when_they_are_gone(tmp_path, capsys):
    from fer_exp import ensemble, tracking

    def only(runs, **tags):
        return [r for r in runs if all(r.data.tags.get(k) == v for k, v in tags.items())]

    assert run_cli(tmp_path, "debug=tiny", "data.register_as=null").returncode == 0
    client, runs = store(tmp_path)
    (teacher,) = runs
    t = teacher.info.run_id
    # keep_weights=last as in recipe, fast and speedrun: the model in memory, compiled with fer_exp's loss, is logged
    p = run_cli(tmp_path, "debug=tiny", f"teacher={t}", "distill.views=2", "distill.alpha=0.8", "keep_weights=last",
                "data.register_as=null", f"data.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    client, runs = store(tmp_path)
    (student,) = [r for r in runs if r.info.run_id != t]
    s = student.info.run_id
    (lineage,) = json.loads(student.data.tags[tracking.TAG_TEACHERS])
    model_h5 = client.download_artifacts(t, "model.h5", str(tmp_path))
    assert lineage == {"ref": t, "run_id": t, "members": [], "classes": CLASSES,
                       "sha256": hashlib.sha256(open(model_h5, "rb").read()).hexdigest()}  # fmt: skip
    name = teacher.info.run_name
    assert student.data.tags[tracking.TAG_DISTILLED_FROM] == f"{name} (run {t[:8]})"
    assert student.data.params["distill.alpha"] == "0.8" and "teacher_seconds" in student.data.metrics
    assert [f.name[:9] for f in (tmp_path / "cache").iterdir()] == ["teachers-"]  # what its reproduction reuses

    again = command(tmp_path, "reproduce", s)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"teacher      same: {name} (run {t[:8]}) {lineage['sha256'][:12]}" in again.stdout
    assert ": identical: every metric equal" in again.stdout
    served = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_FER_EXP, f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", f"runs:/{s}/model"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=user_env(),
    )  # fmt: skip
    assert served.stdout.strip().splitlines()[-1:] == ["fer_exp imported: False"], served.stderr[-2000:]
    # distill.views=online: the teacher on each augmented batch, no probabilities computed beforehand
    p = run_cli(tmp_path, "debug=tiny", f"teacher={t}", "distill.views=online", "data.register_as=null")
    assert p.returncode == 0, p.stderr[-3000:]
    client, runs = store(tmp_path)
    (online,) = [r for r in runs if r.data.params.get("distill.views") == "online"]  # beside a reproduction of s
    assert online.info.status == "FINISHED" and "teacher_seconds" not in online.data.metrics
    client.delete_run(online.info.run_id)

    # an ensemble of the two as a teacher, once one of its members is gone
    capsys.readouterr()
    assert ensemble.main([f"runs={t},{s}", "tta=1", f"tracking.dir={tmp_path / 'mlruns'}"]) == 0
    _, runs = store(tmp_path)
    (averaged,) = only(runs, **{tracking.TAG_ROLE: "ensemble"})
    client.delete_run(s)
    p = run_cli(tmp_path, "debug=tiny", f"teacher={averaged.info.run_id}", report_tensorflow=True)
    out = p.stdout + p.stderr
    assert p.returncode == 2 and f"ensemble run {averaged.info.run_id} averages runs that are gone" in out, out[-3000:]
    assert s in out and "Traceback" not in out and p.stdout.splitlines()[-1] == "tensorflow imported: False"

    client.restore_run(s)
    reruns = len(only(runs, **{tracking.TAG_ROLE: tracking.ROLE_REPRODUCTION}))
    client.delete_run(t)  # the student's own teacher is gone: its reproduction refuses, naming it
    refused = command(tmp_path, "reproduce", s)
    assert refused.returncode == 2 and f"teacher={t}: run {t} ({name}) is deleted" in refused.stderr, (
        refused.stdout[-2000:] + refused.stderr[-2000:]
    )
    assert "Epoch 1" not in refused.stdout and "Traceback" not in refused.stderr
    _, after = store(tmp_path)
    assert len(only(after, **{tracking.TAG_ROLE: tracking.ROLE_REPRODUCTION})) == reruns == 1  # none half-written


@slow
def test_teachers_that_cannot_teach_exit_2_in_seconds_and_write_nothing(tmp_path):
    import keras

    def saved(name, size, classes):
        inputs = keras.Input((size, size, 1))
        model = keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(keras.layers.Flatten()(inputs)))
        (tmp_path / name).mkdir()
        model.save(tmp_path / name / "model.h5")
        (tmp_path / name / "classes.json").write_text(json.dumps(classes))
        return tmp_path / name / "model.h5"

    cases = [
        ("0123456789abcdef0123456789abcdef", "teacher=0123456789abcdef0123456789abcdef: not found in", False),
        (saved("reversed", 48, CLASSES[::-1]), "names the classes ['surprise', 'sad',", False),
        (saved("small", 32, CLASSES), "takes 32x32 images, this job's data 48x48 (data.image_size)", True),
        (tmp_path / "missing.h5", f"teacher={tmp_path / 'missing.h5'}: no such file", False),
    ]
    for ref, said, loads_tensorflow in cases:
        p = run_cli(tmp_path, "debug=tiny", f"teacher={ref}", report_tensorflow=True)
        out = p.stdout + p.stderr
        assert p.returncode == 2 and said in out and "Traceback" not in out and "Epoch 1" not in out, out[-3000:]
        assert p.stdout.splitlines()[-1] == f"tensorflow imported: {loads_tensorflow}"
    _, runs = store(tmp_path)
    assert runs == []  # nothing half-written
