"""fer_exp.reproduce for real: runs recorded by the runner in a temporary git copy of the project,
re-run from their logged config or (--checkout) their own commit and patch, and judged."""

import shutil
import subprocess
import sys

import pytest
from helpers.data import write_folders
from helpers.runner import ROOT, store, user_env

from fer_exp.data import data_digests, load_data
from fer_exp.differences import first_divergence, seed_tolerance
from fer_exp.reproduce import job_overrides
from fer_exp.tracking import provenance

slow = pytest.mark.slow
GIT = ["git", "-c", "user.name=fer_exp tests", "-c", "user.email=tests@fer-exp.invalid"]


def copy_project(dst):
    """The project's code, conf and lock (tracked or new, as they are now) committed in a new git repository at dst."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for rel in listed.split():
        if rel.split("/")[0] in ("fer_exp", "conf", "hydra_plugins") or rel in ("pyproject.toml", "uv.lock"):
            if (ROOT / rel).is_file():
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, dst / rel)
    commit(dst, "the project as tested", init=True)
    return dst


def commit(repo, message, init=False):
    if init:
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*GIT, "-C", str(repo), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(repo), "commit", "-qm", message], check=True)


def edit(path, old, new):
    text = path.read_text()
    assert old in text, f"{path} no longer holds {old!r}: update the test"
    path.write_text(text.replace(old, new))


def run_in(repo, tmp, module, *args):
    """`python -m fer_exp.<module> ARGS` with the copy at `repo` as the code (it is the current directory)."""
    store_args = (
        [f"tracking.dir={tmp / 'mlruns'}", f"hydra.run.dir={tmp / 'run'}", f"hydra.sweep.dir={tmp / 'sweep'}"]
        if module == "run"
        else ["--tracking-dir", str(tmp / "mlruns")]
    )
    return subprocess.run(
        [sys.executable, "-m", f"fer_exp.{module}", *args, *store_args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=900,
        env=user_env(),
    )


def runs_by_role(tmp):
    client, runs = store(tmp)
    roles = ("job", "sweep", "reproduction")
    return client, {role: [r for r in runs if r.data.tags.get("fer_exp.role") == role] for role in roles}


def verdicts(p):
    return [line for line in p.stdout.splitlines() if " -> " in line and ": run " in line]


@slow
def test_a_seeded_run_reproduces_after_conf_and_code_change_and_a_code_change_is_caught(tmp_path):
    repo = copy_project(tmp_path / "repo")
    p = run_in(repo, tmp_path, "run", "debug=tiny", "model=shallow", "epochs=2", "seed=3")
    assert p.returncode == 0, p.stderr[-3000:]
    client, runs = runs_by_role(tmp_path)
    original = runs["job"][0]
    run_id = original.info.run_id
    assert original.data.tags["fer_exp.git_dirty"] == "false" and original.data.tags[
        "fer_exp.lock"
    ] == provenance.lock_hash(repo)
    assert original.data.tags["fer_exp.command"].startswith("python -m fer_exp.run debug=tiny")
    env = client.download_artifacts(run_id, "environment.txt", str(tmp_path))
    assert "tensorflow==" in open(env).read() and "pytest==" in open(env).read()  # every package, not a chosen few

    # a conf default changed and committed: the logged config is what is re-run
    edit(repo / "conf" / "config.yaml", "label_smoothing: 0.0", "label_smoothing: 0.2")
    commit(repo, "a new default")
    p = run_in(repo, tmp_path, "reproduce", run_id)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "today's defaults would change label_smoothing 0.0 -> 0.2" in p.stdout
    assert "code         differs: commit" in p.stdout
    [line] = verdicts(p)
    assert ": identical: every metric equal" in line
    client, runs = runs_by_role(tmp_path)
    (rerun,) = runs["reproduction"]  # marked: a filter on the role leaves it out of the run list
    assert rerun.data.tags.get("fer_exp.reproduces") == run_id
    assert rerun.data.tags["fer_exp.reproduced"] == "identical" and rerun.data.params["label_smoothing"] == "0.0"
    assert client.get_run(run_id).data.tags["fer_exp.reproduced"] == "identical"

    # a code change committed too: today's code differs; the run's own code (--checkout, on the
    # run's conf) reproduces
    edit(repo / "fer_exp" / "data" / "pipeline.py", "/ 255.0", "/ 128.0")
    commit(repo, "another input scale")
    p = run_in(repo, tmp_path, "reproduce", run_id, "--tolerance", "0")
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    assert ": differs: " in verdicts(p)[0] and "first difference at epoch 1 " in verdicts(p)[0]
    p = run_in(repo, tmp_path, "reproduce", run_id, "--checkout")
    assert p.returncode == 0 and ": identical: " in verdicts(p)[0], p.stdout[-3000:] + p.stderr[-3000:]
    assert (
        subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True).stdout.count("\n")
        == 1
    )  # removed


@slow
def test_a_dirty_sweep_is_replayed_by_checkout_job_by_job(tmp_path):
    repo = copy_project(tmp_path / "repo")
    # uncommitted: a changed input scale and a new, untracked augment config the sweep uses
    edit(repo / "fer_exp" / "data" / "pipeline.py", "/ 255.0", "/ 200.0")
    (repo / "conf" / "augment" / "mine.yaml").write_text((repo / "conf" / "augment" / "none.yaml").read_text())
    p = run_in(repo, tmp_path, "run", "-m", "debug=tiny", "model=shallow", "lr=1e-3,1e-2", "augment=mine")
    assert p.returncode == 0, p.stderr[-3000:]
    client, runs = runs_by_role(tmp_path)
    [parent] = runs["sweep"]
    assert (
        parent.data.tags["fer_exp.git_dirty"] == "true"
        and parent.data.tags["fer_exp.untracked"] == "conf/augment/mine.yaml"
    )
    patch = open(client.download_artifacts(parent.info.run_id, "source.patch", str(tmp_path))).read()
    assert "/ 200.0" in patch and "conf/augment/mine.yaml" in patch
    subprocess.run(["git", "-C", str(repo), "checkout", "--", "."], check=True)
    (repo / "conf" / "augment" / "mine.yaml").unlink()

    p = run_in(repo, tmp_path, "reproduce", parent.info.run_id, "--checkout")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    lines = verdicts(p)
    assert len(lines) == 2 and all(": identical: " in line for line in lines), lines
    assert {line.split(":")[0] for line in lines} == {j.info.run_name for j in runs["job"]}
    # the sweep registered its best job: a model URI names the same run
    from fer_exp import tracking

    tracking.connect(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    best = client.get_run(parent.info.run_id).data.tags["fer_exp.best_run"]
    assert tracking.resolve_run("models:/fer-synthetic@champion") == best == tracking.resolve_run(f"runs:/{best}/model")


@slow
def test_changed_data_is_refused_before_any_epoch(tmp_path, capsys, monkeypatch):
    from fer_exp.reproduce import main as reproduce

    for name in (
        "TF_ENABLE_ONEDNN_OPTS",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
    ):  # what reproduce sets: restored after
        monkeypatch.delenv(name, raising=False)

    write_folders(tmp_path / "fer", per_class=3)
    p = run_in(
        ROOT, tmp_path, "run", "debug=tiny", "data=fer2013", f"data.root={tmp_path / 'fer'}", "data.register_as=null"
    )
    assert p.returncode == 0, p.stderr[-3000:]
    _, runs = runs_by_role(tmp_path)
    run_id = runs["job"][0].info.run_id
    next((tmp_path / "fer" / "train" / "happy").iterdir()).unlink()
    capsys.readouterr()
    assert reproduce([run_id, "--tracking-dir", str(tmp_path / "mlruns")]) == 2  # in-process: it trains nothing
    out, err = capsys.readouterr()
    assert f"data differs in {tmp_path / 'fer'}: train: the run's" in err and "--force" in err
    assert "Traceback" not in err and "Epoch 1" not in out
    _, after = runs_by_role(tmp_path)
    assert len(after["job"]) == 1  # nothing half-written
    shutil.rmtree(tmp_path / "fer")
    assert reproduce([run_id, "--tracking-dir", str(tmp_path / "mlruns")]) == 2
    assert "data root not found" in capsys.readouterr().err


@slow
def test_a_data_root_with_a_space_is_recorded_whole_compared_and_reproduced(tmp_path, capsys):
    from fer_exp import compare

    for name in ("my faces", "your faces"):
        write_folders(tmp_path / name, per_class=3)
    roots = f"{tmp_path / 'my faces'},{tmp_path / 'your faces'}"
    p = run_in(ROOT, tmp_path, "run", "-m", "debug=tiny", "data=fer2013", f"data.root={roots}", "data.register_as=null")
    assert p.returncode == 0, p.stderr[-3000:]
    assert compare.main([f"tracking.dir={tmp_path / 'mlruns'}", f"out_dir={tmp_path / 'compare'}"]) == 0
    table = capsys.readouterr().out
    assert f"data.root={tmp_path / 'my faces'}" in table and f"data.root={tmp_path / 'your faces'}" in table

    _, runs = runs_by_role(tmp_path)
    run_id = next(r.info.run_id for r in runs["job"] if r.data.params["data.root"] == str(tmp_path / "my faces"))
    p = run_in(ROOT, tmp_path, "reproduce", run_id)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "same: today's conf/ composes the run's config" in p.stdout  # its overrides, whole, composed today
    assert ": identical: every metric equal" in verdicts(p)[0]


def test_data_digests_match_what_load_data_records_without_decoding(folders):
    cfg = {
        "format": "folders",
        "root": str(folders),
        "classes": ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"],
        "image_size": 48,
    }
    splits, _ = load_data(cfg)
    digests, source = data_digests(cfg)
    assert digests == {k: s.digest for k, s in splits.items()} and source == str(folders.resolve())
    next((folders / "validation" / "sad").iterdir()).unlink()
    after, _ = data_digests(cfg)
    assert after["train"] == digests["train"] and after["validation"] != digests["validation"]
    synthetic = {
        "format": "synthetic",
        "classes": cfg["classes"],
        "image_size": 48,
        "train_per_class": 2,
        "val_per_class": 1,
    }
    assert data_digests(synthetic, seed=5)[0] == {k: s.digest for k, s in load_data(synthetic, seed=5)[0].items()}


def test_code_state_puts_untracked_sources_into_a_patch_that_applies(tmp_path):
    repo = tmp_path / "repo"
    (repo / "fer_exp").mkdir(parents=True)
    (repo / "fer_exp" / "a.py").write_text("x = 1\n")
    commit(repo, "one file", init=True)
    assert provenance.code_state(repo)["dirty"] is False and provenance.code_state(repo)["patch"] == ""
    (repo / "fer_exp" / "a.py").write_text("x = 2\n")
    (repo / "fer_exp" / "b.py").write_text("y = 3\n")
    (repo / "notes.txt").write_text("not code")
    state = provenance.code_state(repo)
    assert state["dirty"] and state["untracked"] == ["fer_exp/b.py"]
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "apply", "-"], input=state["patch"], text=True, check=True)
    assert (clone / "fer_exp" / "a.py").read_text() == "x = 2\n" and (
        clone / "fer_exp" / "b.py"
    ).read_text() == "y = 3\n"
    assert not (clone / "notes.txt").exists()
    assert provenance.code_state(tmp_path / "nowhere") is None


def test_a_machines_local_settings_go_into_the_patch_without_making_the_run_dirty(tmp_path):
    repo = tmp_path / "repo"
    (repo / "conf" / "local").mkdir(parents=True)
    (repo / "conf" / "config.yaml").write_text("threads: null\n")
    (repo / ".gitignore").write_text("conf/local/*\n")
    commit(repo, "a config", init=True)
    (repo / "conf" / "local" / "default.yaml").write_text("threads: 2\n")  # git-ignored
    state = provenance.code_state(repo)
    assert not state["dirty"] and state["untracked"] == [] and "conf/local/default.yaml" in state["patch"]
    clone = tmp_path / "clone"  # what --checkout's worktree gets: the run composes the same settings
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "apply", "-"], input=state["patch"], text=True, check=True)
    assert (clone / "conf" / "local" / "default.yaml").read_text() == "threads: 2\n"


def test_environment_text_lists_every_package_and_reads_back():
    env = provenance.parse_environment(provenance.environment_text())
    assert env["python"] == sys.version.split()[0] and env["numpy"] and env["mlflow"] and "lock" in env
    assert provenance.parse_environment("python 3.11.7\nnumpy==2.1.0\nscikit_learn==1.9.0\n") == {
        "python": "3.11.7",
        "numpy": "2.1.0",
        "scikit-learn": "1.9.0",
    }


def test_first_divergence_names_the_epoch_and_metric():
    old = {"loss": [1.0, 0.5, 0.4], "val_accuracy": [0.2, 0.3, 0.4], "best_val_accuracy": [0.4]}
    assert first_divergence(old, {k: list(v) for k, v in old.items()}, 3) is None
    new = {**old, "loss": [1.0, 0.5, 0.41], "val_accuracy": [0.2, 0.31, 0.4]}
    assert first_divergence(old, new, 3) == "epoch 2 val_accuracy: 0.3 vs 0.31"
    assert first_divergence(old, {**old, "best_val_accuracy": [0.5]}, 3) == "best_val_accuracy: 0.4 vs 0.5"
    assert first_divergence(old, {**old, "loss": [1.0, 0.5]}, 3) == "epoch 3 loss: 0.4 vs None"


def test_job_overrides_drop_where_results_go_and_resume():
    tag = "model=deep lr=0.001 tracking.dir=/tmp/x/mlruns resume=true +tracking.uri=http://h debug=tiny"
    assert job_overrides(tag) == ["model=deep", "lr=0.001", "debug=tiny"]


def test_checkout_restores_a_commit_with_its_patch_and_refuses_what_it_cannot(tmp_path):
    repo = tmp_path / "repo"
    (repo / "fer_exp").mkdir(parents=True)
    (repo / "fer_exp" / "a.py").write_text("x = 1\n")
    commit(repo, "one file", init=True)
    first = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (repo / "fer_exp" / "a.py").write_text("x = 2\n")
    patch = provenance.code_state(repo)["patch"]
    commit(repo, "x = 2")
    (repo / "fer_exp" / "a.py").write_text("x = 3\n")  # today's tree, dirty: a checkout leaves it alone
    with provenance.checkout(first, patch, root=repo) as folder:
        assert (folder / "fer_exp" / "a.py").read_text() == "x = 2\n"
    assert not folder.exists() and (repo / "fer_exp" / "a.py").read_text() == "x = 3\n"
    with pytest.raises(provenance.CheckoutError, match="commit 0{40} is not in the repository"):
        with provenance.checkout("0" * 40, None, root=repo):
            pass
    with pytest.raises(provenance.CheckoutError, match="its patch does not apply on commit"):
        with provenance.checkout(first, patch.replace("-x = 1", "-x = 9"), root=repo):
            pass
    assert (
        subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True).stdout.count("\n")
        == 1
    )


def test_within_noise_is_the_seed_spread_of_the_same_config_else_half_a_point():
    def run(seed, score, lr="0.001", rerun=False):
        tags = {"fer_exp.reproduces": "x"} if rerun else {}
        return {
            "params": {"lr": lr, "seed": str(seed), "tracking.dir": str(seed)},
            "metrics": {"best_val_accuracy": score},
            "tags": tags,
        }

    mine = run(1, 0.50)
    assert seed_tolerance(mine, [mine], None) == (0.005, "0.5 points (default; this config has no repeated seeds)")
    others = [mine, run(2, 0.52), run(3, 0.54), run(4, 0.9, lr="0.01"), run(5, 0.1, rerun=True)]
    tol, why = seed_tolerance(mine, others, None)
    assert abs(tol - 0.02) < 1e-9 and why == "2.00 points: the std of best_val_accuracy over 3 seeds of this config"
    assert seed_tolerance(mine, others, 1.5) == (0.015, "1.5 points (--tolerance)")
