"""Servers a benchmark starts beside itself (up until they answer, stopped after), and
the bookkeeping of repeated, interleaved runs against them: medians, spreads, pairwise
ratios and the header every report starts with."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

import httpx
import psutil

RESULTS = Path(__file__).resolve().parent / "results"
RAW = RESULTS / "raw"
VLLM = str(Path(sys.executable).parent / "meridian-vllm")


def vllm_serve_command(model_path: str, model_id: str, port: int, max_model_len: int) -> list[str]:
    """Bare `vllm serve` of a model on the loopback address, as the benchmarks start it."""
    return [
        VLLM, "serve", model_path, "--served-model-name", model_id, "--host", "127.0.0.1",
        "--port", str(port), "--max-model-len", str(max_model_len),
    ]  # fmt: skip


def wait_until_answering(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before answering {url}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5).status_code < 500:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


@contextlib.contextmanager
def served(
    command: list[str], ready_url: str, log: Path, env: dict[str, str] | None = None, ready_timeout_s: float = 600
) -> Iterator[subprocess.Popen]:
    """Start `command` (output to `log`), yield its process once `ready_url` answers."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
    try:
        wait_until_answering(ready_url, process, ready_timeout_s)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and every descendant still alive."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(pid: int, descendants: bool = True) -> float:
    """User + system CPU seconds of a process and (unless told not to) its live descendants."""
    total = 0.0
    for process in process_tree(pid) if descendants else [psutil.Process(pid)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = process.cpu_times()
            total += times.user + times.system
    return total


# --- repeated runs ---------------------------------------------------------------------


def command_line() -> str:
    """This process's command line as typed from the repository (or with a `cd`)."""
    executable = sys.executable
    with contextlib.suppress(ValueError):
        relative = os.path.relpath(executable)
        if not relative.startswith(".."):
            executable = relative
    command = shlex.join([executable, *sys.argv])
    return (
        command
        if Path.cwd() == Path(__file__).resolve().parent.parent
        else f"cd {shlex.quote(os.getcwd())} && {command}"
    )


def machine() -> dict[str, object]:
    """What this run ran on, read now."""
    cpu_model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory = psutil.virtual_memory()
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_total_gib": memory.total / 2**30,
        "memory_available_gib": memory.available / 2**30,
        "load_average_1m": os.getloadavg()[0],
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def report_header(title: str, command: str, started: datetime, machine_info: dict, repeats: int) -> list[str]:
    """Command, date, machine and repeats. `machine_info` is `machine()` at the start, with
    an optional `load_average_1m_end` read when the measurement ended."""
    end = machine_info.get("load_average_1m_end")
    return [
        f"# {title}",
        "",
        "Command:",
        "",
        f"    {command}",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: nproc {machine_info['nproc']} ({machine_info['cpu_model'] or 'unknown CPU'}), "
        f"memory {machine_info['memory_total_gib']:.1f} GiB total, "
        f"{machine_info['memory_available_gib']:.1f} GiB available at the start, "
        f"1-minute load average {machine_info['load_average_1m']:.2f} at the start"
        + (f", {end:.2f} at the end" if end is not None else ""),
        f"- repeats: {repeats} rounds, interleaved: each round measures every target once, in the order listed below",
    ]


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max); NaN for no values."""
    finite = [v for v in values if v == v]
    if not finite:
        return float("nan"), float("nan"), float("nan")
    return statistics.median(finite), min(finite), max(finite)


def pairwise(a: Sequence[float], b: Sequence[float], op: Callable[[float, float], float]) -> list[float]:
    """op(a[i], b[i]) for every repetition i (NaN where it cannot be computed)."""
    out = []
    for x, y in zip(a, b, strict=True):
        try:
            out.append(op(x, y))
        except ZeroDivisionError:
            out.append(float("nan"))
    return out


def ratio(x: float, y: float) -> float:
    return x / y


def difference(x: float, y: float) -> float:
    return x - y


def metric_table(label: str, rows: Sequence[tuple[str, Sequence[float], str]]) -> list[str]:
    """One markdown table: a row per (name, value per repetition, format spec) with the
    median, the min–max and every repetition's value."""
    repeats = max((len(values) for _, values, _ in rows), default=0)
    lines = [
        f"| {label} | median | min–max | " + " | ".join(f"round {i + 1}" for i in range(repeats)) + " |",
        "|---|---|---|" + "---|" * repeats,
    ]
    for name, values, spec in rows:
        median, low, high = spread(values)
        cells = [format(median, spec), f"{format(low, spec)} – {format(high, spec)}"]
        cells += [format(v, spec) for v in values] + [""] * (repeats - len(values))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def publish(name: str, raw: dict, report: str) -> None:
    """Keep a run: its figures in results/raw/NAME.json (the report is rendered from
    them), its report in results/NAME.md; and print the report."""
    RAW.mkdir(parents=True, exist_ok=True)
    (RAW / f"{name}.json").write_text(json.dumps(raw, indent=1, ensure_ascii=False))
    (RESULTS / f"{name}.md").write_text(report)
    print(report)
