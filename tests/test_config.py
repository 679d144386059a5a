import importlib
import subprocess
import sys

import pytest
from helpers.runner import CONF, ROOT


def groups(name):
    return sorted(p.stem for p in (CONF / name).glob("*.yaml") if not p.stem.startswith("_"))


def test_defaults_reproduce_the_notebook(compose):
    cfg = compose()
    assert cfg.model.name == "deep" and cfg.lr == 1e-4 and cfg.batch_size == 64 and cfg.optimizer == "adam"
    assert cfg.augment.flip == "horizontal_and_vertical" and cfg.augment.rotation == 10
    assert cfg.data.classes == ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


@pytest.mark.parametrize("data", groups("data"))
@pytest.mark.parametrize("augment", groups("augment"))
def test_every_data_and_augment_config_composes(compose, data, augment):
    cfg = compose([f"data={data}", f"augment={augment}"])
    assert len(cfg.data.classes) == 7 and cfg.data.image_size == 48
    from fer_exp.data import build_augmenter

    aug = build_augmenter(**cfg.augment)
    assert (aug is None) == (augment == "none")


def test_the_model_configs_are_the_architectures_models_builds():
    from fer_exp.config import model_names
    from fer_exp.models import MODELS

    assert model_names() == sorted(MODELS)


@pytest.mark.parametrize("model", groups("model"))
def test_every_model_config_builds(compose, model):
    from fer_exp.models import build_model

    cfg = compose([f"model={model}"])
    m = build_model(input_shape=(48, 48, 1), num_classes=len(cfg.data.classes), **cfg.model)
    assert m.input_shape == (None, 48, 48, 1) and m.output_shape == (None, 7)
    assert not m.compiled


def test_deep_has_the_notebooks_parameter_count(compose):
    from fer_exp.models import build_model

    m = build_model(input_shape=(48, 48, 1), num_classes=7, **compose(["model=deep"]).model)
    assert m.count_params() == 856_711


def test_unknown_model_name_is_a_clear_error():
    from fer_exp.models import build_model

    with pytest.raises(ValueError, match="model.name='vgg99'.*deep"):
        build_model("vgg99", (48, 48, 1), 7)


def test_help_lists_groups_and_options():
    out = subprocess.run(
        [sys.executable, "-m", "fer_exp.run", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for line in (
        "model: airbench, deep, efficientnet_b2, shallow",
        "augment: none, notebook, strong",  # not the old name augment=seed, which still works
        "data: fer2013, fer2013_csv, synthetic",  # not _fer7, a part of each
        "lr:",
        "batch_size:",
        "early_stopping:",
    ):
        assert line in out
    assert "example" not in out and "_fer7" not in out


def test_fit_shows_a_progress_bar_only_on_a_terminal(monkeypatch):
    import io

    from fer_exp.training.callbacks import fit_verbosity

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert fit_verbosity("auto") == 2
    monkeypatch.setattr("sys.stdout", Terminal())
    assert fit_verbosity("auto") == 1 and fit_verbosity(2) == 2


@pytest.mark.parametrize(
    "launcher, expected",
    [
        ("ray", ["_target_: hydra_plugins.fer_exp_ray.FaultTolerantRayLauncher", "max_retries: 0"]),
        # SLURM cannot run here: this checks the config composes against the plugin's schema
        (
            "slurm",
            [
                "_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
                "cpus_per_task: 8",
                "signal_delay_s: 120",
            ],
        ),
    ],
)
def test_cluster_launcher_configs_compose(launcher, expected):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the cluster extra is not installed")
    cmd = [sys.executable, "-m", "fer_exp.run", f"hydra/launcher={launcher}", "--cfg", "hydra", "-p", "hydra.launcher"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0 and "warn" not in p.stderr.lower(), p.stderr
    for line in expected:
        assert line in p.stdout


@pytest.mark.parametrize(
    "bad, key",
    [
        ("lr=abc", "lr="),
        ("epochs=-3", "epochs="),
        ("optimizer=adamm", "optimizer="),
        ("tta_views=11", "tta_views="),
        ("model.name=vgg99", "model.name="),
    ],
)
def test_a_bad_value_fails_at_once_naming_the_key(compose, bad, key):
    from fer_exp.config import ConfigError, validate

    validate(compose())  # the defaults pass
    with pytest.raises(ConfigError, match=f"^{key}.* is not valid: expected "):
        validate(compose([bad]))


@pytest.mark.slow
def test_lr_abc_fails_before_any_work_with_one_line(tmp_path):
    from helpers.runner import run_cli

    p = run_cli(tmp_path, "lr=abc", timeout=120, store=False)
    errors = [line for line in (p.stdout + p.stderr).splitlines() if "ERROR" in line]
    assert p.returncode == 2 and len(errors) == 1 and "lr='abc' is not valid: expected a number > 0" in errors[0]
    assert "Traceback" not in p.stderr and not (tmp_path / "mlruns").exists()  # no run, no store: nothing started


@pytest.mark.parametrize("tool", ["compare", "story", "ensemble", "evaluate", "sync"])
def test_every_tool_lists_its_keys_and_names_an_unknown_one(tool, capsys):
    module = importlib.import_module(f"fer_exp.{tool}")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "tracking.dir=" in out
    for key, (_, meaning) in module.KEYS.items():
        assert any(line.startswith(f"  {key}=") and line.endswith(meaning) for line in out.splitlines()), key
    with pytest.raises(SystemExit) as exit_:
        module.main(["bogus_key=1"])
    assert exit_.value.code == 2 and "error: unknown key(s): bogus_key" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        module.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("fer_exp ")


def test_the_old_store_keys_still_work_and_experiment_is_only_a_preset(tmp_path, capsys):
    from fer_exp import compare

    assert compare.main([f"tracking_dir={tmp_path / 'none'}"]) == 2  # the old name: an alias
    assert f"no MLflow store at {tmp_path / 'none'}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        compare.main(["experiment=fast"])
    assert (
        exit_.value.code == 2 and "the MLflow experiment to read is tracking.experiment=NAME" in capsys.readouterr().err
    )


def test_augment_seed_is_the_former_name_of_augment_notebook_until_0_2(compose):
    from importlib.metadata import version

    if tuple(int(x) for x in version("fer_exp").split(".")[:2]) >= (0, 2):
        assert not (CONF / "augment" / "seed.yaml").exists(), "augment=seed was to go in fer_exp 0.2"
        return
    assert compose(["augment=seed"]).augment == compose(["augment=notebook"]).augment == compose().augment


def test_reproduce_and_predict_take_key_value_and_keep_their_flags():
    from pathlib import Path

    from fer_exp.predict import parse_args as predict_args
    from fer_exp.reproduce import parse_args as reproduce_args

    a = reproduce_args(["run=abc", "checkout=true", "jobs=best", "tolerance=0.5", "tracking.dir=/x"])
    assert (a.run, a.checkout, a.force, a.jobs, a.tolerance, a.tracking_dir) == ("abc", True, False, "best", 0.5, "/x")
    b = reproduce_args(["abc", "--force", "--tracking-dir", "/y", "tracking_uri=http://h:5050"])
    assert (b.run, b.force, b.tracking_dir, b.tracking_uri) == ("abc", True, "/y", "http://h:5050")
    p = predict_args(["model=m.h5", "photo.jpg", "out=/tmp/o", "no_detect=true", "tracking.uri=http://h"])
    assert p.model == "m.h5" and p.inputs == ["photo.jpg"] and p.out == Path("/tmp/o")  # out= is not an input
    assert p.no_detect and p.tracking_uri == "http://h"
