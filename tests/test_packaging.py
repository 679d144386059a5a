"""fer_exp installed from its wheel (not editable): the configs travel inside the package."""

import subprocess
import sys
import zipfile

import pytest
from helpers.runner import ROOT, user_env

UV = ROOT / ".tools" / "bin" / "uv"


@pytest.mark.slow
def test_an_installed_wheel_runs_with_its_own_configs_and_not_the_machines(tmp_path):
    if not UV.exists():
        pytest.skip(f"{UV} is missing: `make test` installs it")
    src = tmp_path / "src"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    (src / "conf" / "local" / "default.yaml").write_text("# @package _global_\nthreads: 1\n")  # this machine's
    built = subprocess.run([str(UV), "build", "--wheel", "-o", str(tmp_path / "dist"), str(src)], capture_output=True)
    assert built.returncode == 0, built.stderr.decode()[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"fer_exp/conf/config.yaml", "fer_exp/conf/data/_fer7.yaml", "fer_exp/conf/model/deep.yaml"} <= names
    assert not [n for n in names if n.startswith("fer_exp/conf/local/")]  # a machine's settings stay on it
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip does with a pure-Python wheel
    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing to find beside the package
    elsewhere.mkdir()
    env = {**user_env(), "PYTHONPATH": str(site)}
    probe = (
        "import fer_exp.models as m; print(m.__file__); print(m.FER7_FILE); "
        "print(m.classes_for(m.build_model('shallow', (48, 48, 1), 7), None, 'x'))"
    )
    p = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    module, fer7, classes = p.stdout.strip().splitlines()[-3:]
    assert module.startswith(str(site)) and fer7 == str(site / "fer_exp" / "conf" / "data" / "_fer7.yaml")
    assert classes == str(["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"])
    job = subprocess.run(
        [sys.executable, "-m", "fer_exp.run", "--cfg", "job", "model=vgg"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert job.returncode == 0 and "name: vgg" in job.stdout and "threads: null" in job.stdout, job.stderr[-2000:]


@pytest.mark.slow
def test_the_console_script_runs_every_command_and_provenance_records_its_form(tmp_path):
    from helpers.runner import cli, store

    fer_exp = ROOT / ".venv" / "bin" / "fer-exp"
    if not fer_exp.exists():
        pytest.skip(f"{fer_exp} is missing: `make install` writes it")
    version = subprocess.run([str(fer_exp), "--version"], capture_output=True, text=True, env=user_env())
    assert version.returncode == 0 and version.stdout.startswith("fer_exp ")
    listing = subprocess.run([str(fer_exp)], capture_output=True, text=True, env=user_env()).stdout
    assert all(f"  {c} " in listing for c in ("run", "compare", "story", "reproduce", "sync", "predict"))
    p = subprocess.run(
        [str(fer_exp), "run", *cli(tmp_path, "debug=tiny")[3:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=user_env(),
    )
    assert p.returncode == 0, p.stderr[-3000:]
    _, runs = store(tmp_path)
    assert runs[0].data.tags["fer_exp.command"].startswith("fer-exp run debug=tiny")
    p = subprocess.run([str(fer_exp), "compare", "--help"], capture_output=True, text=True, env=user_env())
    assert p.returncode == 0 and "tracking.dir=mlruns" in p.stdout
