"""Start detached processes and stop them, with everything they spawned.

Every process the launcher starts carries `MERIDIAN_PLATFORM_ID=<id>` in its
environment; children inherit it (Ray's raylet passes its environment to the
workers it forks), so `sweep` can find whatever is left after the process groups
are gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

PLATFORM_ID_ENV = "MERIDIAN_PLATFORM_ID"


def spawn(command: Sequence[str], log_path: Path, platform_id: str, env: dict[str, str] | None = None) -> int:
    """Start `command` in a session of its own, logging to `log_path`; return its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {}), PLATFORM_ID_ENV: platform_id}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
    return process.pid


def is_running(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def is_running_since(pid: int, started_by_s: float) -> bool:
    """`pid` runs and is the process started no later than `started_by_s` (Unix time): once
    a process is gone its pid is handed to a new one, which a pid alone cannot tell apart."""
    try:
        process = psutil.Process(pid)
        # The kernel's start time has a clock tick's grain; a second covers it.
        return process.status() != psutil.STATUS_ZOMBIE and process.create_time() <= started_by_s + 1.0
    except psutil.NoSuchProcess:
        return False


def marked_processes(platform_id: str) -> list[psutil.Process]:
    """Live processes whose environment carries this platform's id."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(PLATFORM_ID_ENV) == platform_id and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def terminate_group(pid: int, grace_s: float = 15.0) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL whatever outlives the grace period."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and is_running(pid):
        time.sleep(0.2)
    _signal_group(pgid, signal.SIGKILL)
    _reap(pid)


def sweep(platform_id: str, grace_s: float = 10.0) -> int:
    """Terminate every process still marked with `platform_id`; return how many there were."""
    leftovers = marked_processes(platform_id)
    for process in leftovers:
        _quietly(process.terminate)
    _, alive = psutil.wait_procs(leftovers, timeout=grace_s)
    for process in alive:
        _quietly(process.kill)
    psutil.wait_procs(alive, timeout=5)
    return len(leftovers)


def _reap(pid: int) -> None:
    """Collect the exit status if `pid` is our own child, so it leaves no zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _quietly(action) -> None:  # type: ignore[no-untyped-def]
    try:
        action()
    except psutil.NoSuchProcess:
        pass
