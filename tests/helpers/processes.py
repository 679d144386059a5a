"""Long-running processes (servers, cluster nodes): free ports, start, wait, stop."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from helpers.runner import ROOT, user_env


def free_port() -> int:
    """A free port for a server to bind later, between Ray's worker ports (10002-19999 by default, which
    `ray start` refuses to share) and the ephemeral range that outgoing connections draw their local ports
    from: one picked there (bind to port 0) can be taken by a connection before the server binds it, as a
    Ray head's was by a PostgreSQL connection in CI."""
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ephemeral.read_text().split()[0]) if ephemeral.exists() else 32768
    for port in random.sample(range(20000, low), 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port found in 100 tries in 20000-{low - 1}")


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until `url` answers; fail at once if the server process exits."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read()[-3000:] if proc.stdout else ""
            raise AssertionError(f"server exited {proc.returncode}: {out}")
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer in {timeout} s")


def start(command, log: Path, env=None, shell=False, cwd=ROOT) -> subprocess.Popen:
    """A long-running process in its own process group (killed with everything it started)."""
    return subprocess.Popen(
        command,
        cwd=cwd,
        shell=shell,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**user_env(), **(env or {})},
    )


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def make_command(target: str, **variables) -> str:
    """The command line `make TARGET VAR=...` runs (from a dry run), to start it as a process here."""
    dry = subprocess.run(
        ["make", "-s", "-n", target, *(f"{k}={v}" for k, v in variables.items())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return dry.stdout.replace("\\\n", " ").strip().splitlines()[-1]
