import sys
import time
import uuid

from meridian_host import processes

# A parent that forks a grandchild in a new session of its own: killing the parent's
# process group does not reach it, only the environment marker finds it.
ESCAPING_TREE = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
time.sleep(60)
"""


def wait_for_count(platform_id: str, count: int, timeout_s: float = 10) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = len(processes.marked_processes(platform_id))
        if found >= count:
            return found
        time.sleep(0.1)
    return len(processes.marked_processes(platform_id))


def test_group_terminate_then_sweep_leaves_nothing(tmp_path):
    platform_id = uuid.uuid4().hex
    pid = processes.spawn([sys.executable, "-c", ESCAPING_TREE], tmp_path / "tree.log", platform_id)
    assert processes.is_running(pid)
    assert wait_for_count(platform_id, 2) == 2

    processes.terminate_group(pid, grace_s=5)
    assert not processes.is_running(pid)
    assert len(processes.marked_processes(platform_id)) == 1  # the escaped grandchild

    assert processes.sweep(platform_id, grace_s=5) == 1
    assert processes.marked_processes(platform_id) == []


def test_is_running_of_nothing():
    assert not processes.is_running(0)
    assert not processes.is_running(None)


def test_a_pid_handed_to_a_newer_process_is_not_the_one_started_then(tmp_path):
    pid = processes.spawn([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "sleep.log", "p")
    launched = time.time()
    try:
        assert processes.is_running_since(pid, launched)
        # A record older than the process now holding its pid is of one gone before it.
        assert not processes.is_running_since(pid, launched - 3600)
    finally:
        processes.terminate_group(pid, grace_s=5)
    assert not processes.is_running_since(pid, launched)
