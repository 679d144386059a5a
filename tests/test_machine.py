"""The machine a run trains on: precision and kernels per CPU, GPUs (faked device lists: we have none),
thread pools, and a machine's own settings in conf/local/."""

import json
import shutil

import mlflow
import pytest
from hydra import compose, initialize_config_dir

from fer_exp.training import machine

A100 = ("NVIDIA A100-SXM4-40GB", (8, 0))
P100 = ("Tesla P100-PCIE-16GB", (6, 0))


@pytest.mark.parametrize(
    ("flags", "auto", "onednn"),
    [
        (("avx2", "fma"), "float32", "1"),  # an AVX2-only EPYC: float32, oneDNN turned on
        (
            ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"),
            "mixed_bfloat16",
            None,
        ),  # a BF16/AMX Xeon: TensorFlow's own default
    ],
)
def test_precision_and_onednn_follow_the_cpu(monkeypatch, flags, auto, onednn):
    monkeypatch.setattr(machine, "cpu", lambda: ("a CPU", flags))
    monkeypatch.setattr(machine, "gpus", lambda: [])
    monkeypatch.delenv(machine.ONEDNN_ENV, raising=False)
    assert machine.precision("auto") == auto and machine.precision("float32") == "float32"
    machine.use_onednn("efficientnet_b2")  # measured slower with oneDNN on an AVX2 CPU: left alone
    assert machine.ONEDNN_ENV not in machine.os.environ
    machine.use_onednn("deep")
    assert machine.os.environ.get(machine.ONEDNN_ENV) == onednn
    assert machine.describe("auto")["onednn"] == "on" and machine.describe("auto")["precision"] == auto
    monkeypatch.setenv(machine.ONEDNN_ENV, "0")  # the user's choice wins
    machine.use_onednn("deep")
    assert machine.os.environ[machine.ONEDNN_ENV] == "0" and machine.describe("auto")["onednn"] == "off"
    assert machine.onednn_env("on") == {machine.ONEDNN_ENV: "1"} and machine.onednn_env("off") == {
        machine.ONEDNN_ENV: "0"
    }
    assert machine.onednn_env(None) == {}  # a run that recorded nothing: TensorFlow's default


@pytest.mark.parametrize(
    ("devices", "auto"),
    [
        ([A100], "mixed_float16"),  # tensor cores: float16
        ([P100], "float32"),  # before Volta: no float16 speed-up
        ([("a GPU that says nothing", None)], "float32"),
    ],
)
def test_on_a_gpu_auto_picks_float16_from_compute_capability_7(monkeypatch, devices, auto):
    bf16_cpu = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    monkeypatch.setattr(machine, "cpu", lambda: ("a CPU", bf16_cpu))  # the GPU decides, not the CPU
    monkeypatch.setattr(machine, "gpus", lambda: devices)
    assert machine.precision("auto") == auto and machine.precision("mixed_bfloat16") == "mixed_bfloat16"
    described = machine.describe("auto")
    assert described["precision"] == auto and described["gpu"].startswith(devices[0][0])
    assert machine.describe("auto", devices=[])["gpu"] == "none"
    assert "compute capability 8.0" in machine.describe("auto", devices=[A100, P100])["gpu"]


def test_gpus_lists_what_tensorflow_sees(monkeypatch, tmp_path):
    import tensorflow as tf

    assert len(machine.gpus()) == len(tf.config.list_physical_devices("GPU"))
    monkeypatch.setattr(machine, "NVIDIA_DRIVER", tmp_path / "driver")  # (as if) loaded: TensorFlow is asked
    (tmp_path / "driver").mkdir()
    assert len(machine.gpus()) == len(tf.config.list_physical_devices("GPU"))
    monkeypatch.setattr(machine, "NVIDIA_DRIVER", tmp_path / "none")  # no driver: no GPU, and no question
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: pytest.fail("TensorFlow was asked"))
    assert machine.gpus() == []


def test_a_run_on_a_gpu_trains_in_mixed_float16_and_records_the_gpu(tmp_path, compose, monkeypatch):
    """precision=auto with a (faked) A100 in the device list: the run trains in mixed_float16 (Keras
    scales the loss; it runs on the CPU here too) and its machine tags name the GPU."""
    from fer_exp.training.job import train

    monkeypatch.setattr(machine, "gpus", lambda: [A100])
    cfg = compose(["debug=tiny", "model=shallow", "precision=auto", f"tracking.dir={tmp_path / 'mlruns'}"])
    result = train(cfg, output_dir=tmp_path / "out")
    run = mlflow.MlflowClient().get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["loss"] == run.data.metrics["loss"]  # finite, not NaN
    assert run.data.tags["fer_exp.machine.precision"] == "mixed_float16"
    assert run.data.tags["fer_exp.machine.gpu"] == "NVIDIA A100-SXM4-40GB (compute capability 8.0)"


def test_threads_size_tensorflows_pools_unless_the_environment_does(monkeypatch):
    for name in machine.THREADS_ENV:
        monkeypatch.delenv(name, raising=False)
    machine.use_threads(None)
    assert not any(name in machine.os.environ for name in machine.THREADS_ENV)
    machine.use_threads(3)
    assert [machine.os.environ[name] for name in machine.THREADS_ENV] == ["3", "3"]
    monkeypatch.setenv(machine.THREADS_ENV[0], "1")
    machine.use_threads(4)
    assert machine.os.environ[machine.THREADS_ENV[0]] == "1"


def test_conf_local_default_holds_a_machines_settings_and_the_command_line_wins(tmp_path):
    from fer_exp.config import conf_dir

    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf, ignore=shutil.ignore_patterns("default.yaml"))
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        assert compose("config").threads is None  # no conf/local/default.yaml: nothing changes
        (conf / "local" / "default.yaml").write_text(
            "# @package _global_\ndata:\n  root: /data/fer\nprecision: auto\nthreads: 2\n"
        )
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", ["experiment=fast"])
        assert (cfg.data.root, cfg.precision, cfg.threads) == ("/data/fer", "auto", 2)
        assert compose("config", ["threads=1", "data=synthetic"]).threads == 1
    example = (conf_dir() / "local" / "example.yaml").read_text()
    assert all(f"# {key}" in example for key in ("data:", "precision:", "threads:"))


def test_peak_comes_from_this_cpus_bench_file(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "cpu", lambda: ("AMD EPYC 9R14 96-Core", ("avx2", "fma", "avx512_bf16")))
    monkeypatch.setattr(machine, "BENCH_RESULTS", tmp_path)
    assert machine.bench_file() == tmp_path / "amd-epyc-9r14-96-core_avx2-fma-avx512_bf16.json"
    assert machine.peak_gflops("float32") is None  # never measured here
    peak = {"float32 matmul": {"value": 120.0}, "float32 conv": {"value": 130.0}, "bfloat16 conv": {"value": 300.0}}
    machine.bench_file().write_text(json.dumps({"peak": peak}))
    assert machine.peak_gflops("float32") == 130.0 and machine.peak_gflops("mixed_bfloat16") == 300.0
    assert machine.peak_gflops("mixed_float16") is None  # a GPU's: the bench measures CPUs
    monkeypatch.setattr(machine, "cpu", lambda: ("AMD EPYC 9R14 96-Core", ("avx2", "fma")))  # same name, older CPU
    assert machine.peak_gflops("float32") is None


def test_every_epoch_logs_its_speed_and_its_mfu_where_the_peak_is_known(tmp_path, compose, monkeypatch):
    from fer_exp.training.job import train

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")  # MLflow's own; 10 s by default
    monkeypatch.setattr(machine, "BENCH_RESULTS", tmp_path / "bench")
    machine.bench_file().parent.mkdir()
    machine.bench_file().write_text(json.dumps({"peak": {"float32 matmul 2048^3": {"value": 100.0}}}))
    cfg = compose(
        ["debug=tiny", "model=shallow", "epochs=2", "precision=float32", f"tracking.dir={tmp_path / 'mlruns'}"]
    )
    run_id = train(cfg, output_dir=tmp_path / "out")["run_id"]
    client = mlflow.MlflowClient()
    history = {k: client.get_metric_history(run_id, k) for k in ("images_per_s", "gflop_per_s", "mfu")}
    assert all([m.step for m in ms] == [0, 1] for ms in history.values()), history
    per_image = client.get_run(run_id).data.metrics["train_gflop_per_image"]
    for images, gflops, mfu in zip(*history.values()):
        assert images.value > 0 and gflops.value == pytest.approx(images.value * per_image)
        assert mfu.value == pytest.approx(gflops.value / 100.0)
    system = client.get_run(run_id).data.metrics
    assert system["system/cpu_utilization_percentage"] > 0 and system["system/system_memory_usage_megabytes"] > 0
