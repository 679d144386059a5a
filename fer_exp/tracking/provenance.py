"""What a rerun needs besides the config: the code (commit, uncommitted patch, untracked sources),
the installed packages and the lock they came from, the command line, and the CPU. No MLflow here."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib.metadata import distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout whose code is running
LOCK = "uv.lock"
# Untracked files here are code a run depends on: they go into its patch.
SOURCE_DIRS = ("fer_exp", "conf", "hydra_plugins")
# A machine's own settings (git-ignored): in the patch too, so that --checkout composes what the run
# composed, but they do not make a run dirty.
LOCAL_DIR = "conf/local"


def _git(*args: str, root: Path = ROOT, ok: tuple[int, ...] = (0,)) -> str:
    p = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if p.returncode not in ok:
        raise subprocess.CalledProcessError(p.returncode, ["git", *args], p.stdout, p.stderr)
    return p.stdout


def code_state(root: Path = ROOT) -> dict | None:
    """{"commit", "dirty", "patch", "untracked"} of the checkout at `root`; None outside a git checkout.

    patch: `git diff HEAD` plus every untracked file under SOURCE_DIRS and the ignored ones under
    LOCAL_DIR as new files, so that `git apply` on the commit gives back the code that ran.
    """
    try:
        commit = _git("rev-parse", "HEAD", root=root).strip()
        patch = _git("diff", "HEAD", "--binary", root=root)
        untracked = _git("ls-files", "--others", "--exclude-standard", "--", *SOURCE_DIRS, root=root).split()
        local = _git("ls-files", "--others", "--ignored", "--exclude-standard", "--", LOCAL_DIR, root=root).split()
        for path in untracked + local:  # exit code 1: the files differ, as they do
            patch += _git("diff", "--no-index", "--binary", "--", "/dev/null", path, root=root, ok=(0, 1))
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no", root=root).strip()) or bool(untracked)
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "dirty": dirty, "patch": patch, "untracked": untracked}


@functools.cache
def packages() -> dict[str, str]:
    """{distribution name (lower case): version} of everything installed in this environment, read once
    per process (a sweep's jobs share it): what the process loaded is what was installed when it began."""
    found = {}
    for d in distributions():
        name = (d.metadata["Name"] or "").lower().replace("_", "-")
        if name:
            found[name] = d.version
    return dict(sorted(found.items()))


def lock_hash(root: Path = ROOT) -> str | None:
    """The first 16 hex digits of uv.lock's SHA-256 (None without a lock: a non-editable install)."""
    path = root / LOCK
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def environment_text() -> str:
    """environment.txt: the Python version, the lock's hash and every installed package."""
    lines = [f"python {sys.version.split()[0]}", f"lock {LOCK} {lock_hash() or 'none'}"]
    return "\n".join(lines + [f"{k}=={v}" for k, v in packages().items()]) + "\n"


def parse_environment(text: str) -> dict[str, str]:
    """environment.txt -> {"python": ..., "lock": ..., package: version}; reads the older short form too."""
    out = {}
    for line in text.splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            out[name.strip().lower().replace("_", "-")] = version.strip()
        elif line.startswith(("python ", "lock ")):
            key, _, value = line.partition(" ")
            out[key] = value.rsplit(" ", 1)[-1]
    return out


def cpu_info() -> tuple[str, set[str]]:
    """(this CPU's model name, its flags), as Linux's /proc/cpuinfo gives them (elsewhere: what platform knows)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    lines = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    lines = {k.strip(): v.strip() for k, v in lines.items()}
    return lines.get("model name", platform.processor() or platform.machine()), set(lines.get("flags", "").split())


def command_line() -> str:
    """This process's command as a user would type it: `python -m fer_exp.run ...` for a module,
    `fer-exp run ...` for the console script (which names itself so in sys.argv[0])."""
    script = Path(sys.argv[0])
    if script.name.startswith("fer-exp "):
        return shlex.join([*script.name.split(), *sys.argv[1:]])
    if script.suffix == ".py" and script.resolve().parent == ROOT / "fer_exp":
        return shlex.join(["python", "-m", f"fer_exp.{script.stem}", *sys.argv[1:]])
    return shlex.join(sys.argv)


class CheckoutError(Exception):
    """The recorded code cannot be restored; the message says why and what to do."""


@contextlib.contextmanager
def checkout(commit: str, patch: str | None, root: Path = ROOT) -> Iterator[Path]:
    """A temporary git worktree of the repository at `root`, at `commit` with `patch` applied; removed on exit."""
    if subprocess.run(
        ["git", "-C", str(root), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True
    ).returncode:
        raise CheckoutError(
            f"commit {commit} is not in the repository at {root}: fetch it (git fetch --all) and try again"
        )
    folder = Path(tempfile.mkdtemp(prefix="fer_exp-checkout-")) / "code"
    _git("worktree", "add", "--detach", "--quiet", str(folder), commit, root=root)
    try:
        if patch:
            applied = subprocess.run(
                ["git", "-C", str(folder), "apply", "--whitespace=nowarn", "-"],
                input=patch,
                text=True,
                capture_output=True,
            )
            if applied.returncode:
                raise CheckoutError(f"its patch does not apply on commit {commit[:12]}: {applied.stderr.strip()[:500]}")
        yield folder
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(folder)], capture_output=True)
        shutil.rmtree(folder.parent, ignore_errors=True)
