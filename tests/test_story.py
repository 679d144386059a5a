"""fer_exp.story: the tuning story page, from a generated 500-run store and from two real sweeps,
checked as text and in a real browser with the network blocked."""

import random
import re
import shutil
import subprocess
import sys
import time

import pytest
from helpers.runner import ROOT, run_cli, user_env

from fer_exp import story

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EXTERNAL = re.compile(r"""<(script|link|img)[^>]+(src|href)=["']?https?://""", re.I)


def generate_store(folder, sweeps=50, jobs_per_sweep=10, seed=0):
    """An MLflow store of `sweeps` grid sweeps over lr x model x seed (a few jobs FAILED or KILLED), as the runner records them."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    rng = random.Random(seed)
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    exp = client.create_experiment("fer_exp", artifact_location=(folder / "artifacts").as_uri())
    clock = 1_700_000_000_000
    for s in range(sweeps):
        tags = {
            "fer_exp.role": "sweep",
            "fer_exp.command": f"python -m fer_exp.run -m lr=1e-4,3e-4,1e-3 model=deep,vgg sweep={s}",
        }
        parent = client.create_run(exp, run_name=f"sweep {s}", tags=tags, start_time=clock).info.run_id
        for _ in range(jobs_per_sweep):
            clock += 1000
            lr, model, seed_ = rng.choice(["0.0001", "0.0003", "0.001"]), rng.choice(["deep", "vgg"]), rng.choice("123")
            status = rng.choices(["FINISHED", "FAILED", "KILLED"], [0.9, 0.05, 0.05])[0]
            name = f"lr={lr},model={model},seed={seed_}"
            tags = {
                "fer_exp.role": "job",
                "fer_exp.sweep_id": parent,
                "mlflow.parentRunId": parent,
                "fer_exp.overrides": name.replace(",", " "),
            }
            run = client.create_run(exp, run_name=name, tags=tags, start_time=clock).info.run_id
            value = 0.45 + 0.1 * (model == "vgg") + 0.05 * (lr == "0.001") + rng.gauss(0, 0.01)
            metrics = {
                "best_val_accuracy": value,
                "val_accuracy_tta": value + 0.01,
                "epochs_run": 30,
                "train_seconds": 900.0,
            }
            params = {"lr": lr, "model.name": model, "seed": seed_, "data.name": "fer2013"}
            client.log_batch(
                run,
                metrics=[Metric(k, v, clock, 0) for k, v in metrics.items()] if status == "FINISHED" else [],
                params=[Param(k, v) for k, v in params.items()],
            )
            client.set_terminated(run, status, end_time=clock + 500)
        client.set_terminated(parent, "FINISHED")
    return folder


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    return generate_store(tmp_path_factory.mktemp("story500"))


def test_five_hundred_runs_render_in_under_ten_seconds(big_store, tmp_path, capsys):
    start = time.perf_counter()
    assert story.main([f"tracking.dir={big_store}", f"out={tmp_path}"]) == 0
    seconds = time.perf_counter() - start
    print(f"\nstory of a generated 500-run store: {seconds:.1f} s (MLflow already imported)", file=sys.stderr)
    assert seconds < 10
    page = (tmp_path / "story.html").read_text()
    assert not EXTERNAL.search(page) and "data:image/png;base64," in page
    assert page.count("<h2") == 50 + 4  # timeline, cost, noise, every sweep, what mattered
    assert (
        "fANOVA importance (Optuna) over" in page and page.count("data:image/png") == 3
    )  # timeline, cost, parallel coordinates
    assert re.search(r"model\.name</td><td>0\.[5-9]", page)  # the setting that decides the score weighs most
    assert "python -m fer_exp.reproduce " in page and "within noise" in page
    md = (tmp_path / "story.md").read_text()
    assert (
        "![every run's score in launch order](story_timeline.png)" in md
        and (tmp_path / "story_timeline.png").stat().st_size > 10_000
    )


def test_bad_input_is_one_line_and_the_page_still_renders(tmp_path, capsys):
    assert story.main([f"tracking.dir={tmp_path / 'nowhere'}"]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    store = generate_store(tmp_path / "store", sweeps=1, jobs_per_sweep=4)
    capsys.readouterr()  # MLflow creating the tables
    assert story.main([f"tracking.dir={store}", f"out={tmp_path / 'a'}"]) == 0
    page = (tmp_path / "a" / "story.html").read_text()
    assert "Importance needs about 10 comparable runs that vary a setting; there are 4 comparable run(s)" in page
    assert story.main([f"tracking.dir={store}", "tracking.experiment=nope", f"out={tmp_path / 'b'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no experiment 'nope' in this store (there: ") and "\n" not in err
    assert story.main([f"tracking.dir={store}", "metric=f1_macro", f"out={tmp_path / 'c'}"]) == 0
    assert "has the metric 'f1_macro'" in capsys.readouterr().err
    assert "No run has the metric yet." in (tmp_path / "c" / "story.html").read_text()
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{store}/mlflow.db").create_experiment("empty")
    assert story.main([f"tracking.dir={store}", "tracking.experiment=empty", f"out={tmp_path / 'd'}"]) == 0
    assert "This experiment has no runs yet." in (tmp_path / "d" / "story.html").read_text()


@pytest.mark.slow
def test_two_real_sweeps_tell_their_story_in_a_browser_without_network(tiny_sweep, tmp_path):
    """The user's sweep, then lr=3e-4 seed=1,2,3: both parents and commands on the page, the second's seed spread."""
    first, _ = tiny_sweep
    shutil.copytree(first / "mlruns", tmp_path / "mlruns")
    p = run_cli(tmp_path, "-m", "lr=3e-4", "seed=1,2,3", "debug=tiny")
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "story"
    p = subprocess.run(
        [sys.executable, "-m", "fer_exp.story", f"tracking.dir={tmp_path / 'mlruns'}", f"out={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=user_env(),
        timeout=300,
    )
    assert p.returncode == 0 and p.stdout.splitlines()[0] == str(out / "story.html"), p.stderr[-3000:]
    page = (out / "story.html").read_text()
    assert not EXTERNAL.search(page) and "<script" not in page
    from helpers.runner import store

    _, runs = store(tmp_path)
    parents = sorted((r for r in runs if r.data.tags.get("fer_exp.role") == "sweep"), key=lambda r: r.info.start_time)
    assert len(parents) == 2
    for parent in parents:
        assert parent.info.run_id in page and parent.data.tags["fer_exp.command"] in page.replace("&#x27;", "'")
    assert "model=deep,shallow lr=1e-4,1e-3" in page and "lr=3e-4 seed=1,2,3" in page
    assert re.search(r"lr=0.0003,debug=tiny</td><td>\d+\.\d% ± \d+\.\d points</td><td>3</td>", page), page[:3000]
    assert "<h2 id=" in page and ">Cost</h2>" in page and "<th>run on the front</th>" in page
    if CHROMIUM is None:
        pytest.skip("Chromium not installed (.ci/run installs Debian's chromium): the page was checked as text only")
    playwright = pytest.importorskip("playwright.sync_api")
    shot = ROOT / "outputs" / "test-screenshots" / "story.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        asked = []
        context.route(
            "**/*",
            lambda route: (
                asked.append(route.request.url),
                route.continue_() if route.request.url.startswith(("file:", "data:")) else route.abort(),
            ),
        )
        page_ = context.new_page()
        page_.goto((out / "story.html").as_uri())
        page_.get_by_text("Best so far:").wait_for(timeout=30_000)
        timeline = page_.locator('img[alt="every run\'s score in launch order"]')
        assert timeline.is_visible() and timeline.evaluate("img => img.naturalWidth") > 300
        for parent in parents:
            assert page_.locator("h2", has_text=parent.info.run_id).is_visible()
        cost = page_.locator('img[alt="each run\'s score against its training minutes, the front joined"]')
        assert cost.is_visible() and cost.evaluate("img => img.naturalWidth") > 300
        assert page_.get_by_role("columnheader", name="run on the front").is_visible()
        page_.screenshot(path=str(shot))
        browser.close()
    assert not [u for u in asked if not u.startswith(("file:", "data:"))]
    assert shot.stat().st_size > 20_000
