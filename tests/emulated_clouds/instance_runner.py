"""Test infrastructure: the instance runner plays the part of the VMs the emulated clouds launch.

moto and the emulated Compute Engine only record instances; nothing boots them. The
runner watches both clouds and, when an instance Meridian launched (AWS tag
`meridian:managed=true`, GCP label `meridian-managed=true`) is running, runs that
instance's own boot script (its EC2 user data, its GCE `startup-script` metadata) with
bash as a local process, the way the VM would on first boot. The point of it is to
prove the boot scripts work: each instance's own script joins the region's Ray cluster
as a real node. This venv stands in for the machine image (its bin dir leads PATH, so
the script's `ray` is this venv's), and the instance type makes the machine's size
(`--num-cpus`).

Every process the script starts inherits `MERIDIAN_EMULATED_INSTANCE=<cloud>:<id>`: the
script's `ray start` returns once Ray's daemons run, so the node outlives the bash
process, and the marker is how the runner finds it again. When the instance stops
running (terminated, preempted, stopped, deleted), the runner SIGKILLs every process
carrying its marker: the machine disappears, as it does in a preemption.

Each machine gets an address of its own on the loopback network (127.0.2.1, 127.0.2.2,
...), as each VM has its own IP: a Ray node's address is never that of a machine gone
before it. Ray's GCS keeps a connection to a lost node's address in gRPC's reconnect
backoff for minutes, and health-checks a new node at the same address through it, so a
node that took a killed machine's address and ports was declared dead 17 s after it
joined. Port blocks are still handed out lowest free first.

`fail_next_boot` makes the next matching instance boot with a script that fails before
Ray starts, as a VM whose image or network is broken: it runs, and never joins.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from capacity.live.aws import MANAGED_TAG
from capacity.live.gcp import MANAGED_LABEL
from meridian_core.spec import PORTS_PER_NODE
from meridian_host.ray_nodes import node_port_flags
from tests.emulated_clouds.gcp import FakeComputeApi

MARKER_VARIABLE = "MERIDIAN_EMULATED_INSTANCE"
VENV_BIN = Path(sys.executable).parent
KILL_TIMEOUT_S = 10.0
FAILING_BOOT_SCRIPT = "#!/bin/bash\necho 'emulated boot failure: Ray is not started' >&2\nexit 1\n"
JOIN_TIMEOUT_S = 15.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunningInstance:
    cloud: str  # "aws" or "gcp"
    instance_id: str  # EC2's instance id; "<zone>/<name>" on GCP, as Meridian's node ids
    instance_type: str
    read_boot_script: Callable[[], str]

    @property
    def marker(self) -> str:
        return f"{self.cloud}:{self.instance_id}"


# 127.0.2.0/24 and on: loopback addresses no other process here uses (Debian gives 127.0.1.1 to the hostname).
FIRST_MACHINE_ADDRESS = ipaddress.IPv4Address("127.0.2.1")
MACHINE_ADDRESSES = 250 * 256


def machine_address(index: int) -> str:
    """The loopback address of the `index`th machine booted (0-based)."""
    if not 0 <= index < MACHINE_ADDRESSES:
        raise ValueError(f"the instance runner has no loopback address for machine {index}")
    return str(FIRST_MACHINE_ADDRESS + index)


@dataclass
class EmulatedMachine:
    instance: RunningInstance
    block_index: int  # of the ports blocks the runner hands out
    script: subprocess.Popen[bytes]  # bash running the boot script


def processes_whose_environment(matches: Callable[[dict[str, str]], bool]) -> list[psutil.Process]:
    """The processes (of those whose environment this user may read) with an environment that `matches`."""
    found = []
    for process in psutil.process_iter():
        try:
            if matches(process.environ()):
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess):  # ZombieProcess is a NoSuchProcess
            continue
    return found


def marked_processes(marker: str | None = None) -> list[psutil.Process]:
    """The processes whose environment carries `MERIDIAN_EMULATED_INSTANCE=<marker>` (any marker if None)."""
    if marker is None:
        return processes_whose_environment(lambda environment: MARKER_VARIABLE in environment)
    return processes_whose_environment(lambda environment: environment.get(MARKER_VARIABLE) == marker)


def kill_marked(marker: str, timeout_s: float = KILL_TIMEOUT_S) -> None:
    """SIGKILL every process carrying `marker`, again while more appear (children a dying
    raylet was still starting), for at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while marked := marked_processes(marker):
        if time.monotonic() > deadline:
            log.warning("%s: %d processes survive SIGKILL: %s", marker, len(marked), [p.pid for p in marked])
            return
        for process in marked:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.05)  # a killed process is a zombie, no longer listed, once the kernel is done with it


def running_on_aws(ec2: Any) -> list[RunningInstance]:
    filters = [
        {"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]},
        {"Name": "instance-state-name", "Values": ["running"]},
    ]
    return [
        RunningInstance(
            "aws",
            instance["InstanceId"],
            instance["InstanceType"],
            functools.partial(user_data, ec2, instance["InstanceId"]),
        )
        for page in ec2.get_paginator("describe_instances").paginate(Filters=filters)
        for reservation in page["Reservations"]
        for instance in reservation["Instances"]
    ]


def user_data(ec2: Any, instance_id: str) -> str:
    """An EC2 instance's user data, decoded ("" without any)."""
    reply = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    encoded = reply.get("UserData", {}).get("Value", "")
    return base64.b64decode(encoded).decode() if encoded else ""


def running_on_gcp(compute: FakeComputeApi) -> list[RunningInstance]:
    return [
        RunningInstance(
            "gcp",
            f"{zone}/{name}",
            instance["machineType"].rsplit("/", 1)[-1],
            functools.partial(startup_script, instance),
        )
        for (zone, name), instance in compute.instances_snapshot().items()
        if instance.get("labels", {}).get(MANAGED_LABEL) == "true" and instance.get("status") == "RUNNING"
    ]


def startup_script(instance: Mapping[str, Any]) -> str:
    """A GCE instance's `startup-script` metadata item ("" without one)."""
    items = instance.get("metadata", {}).get("items", [])
    return next((item.get("value", "") for item in items if item.get("key") == "startup-script"), "")


class InstanceRunner:
    """Boots the emulated clouds' running Meridian instances as local processes and kills
    them when their instances stop running. Either cloud is optional."""

    def __init__(
        self,
        *,
        logs_dir: Path,
        ports_from: int,
        vcpus_by_instance_type: Mapping[str, int],
        ec2: Any = None,  # a boto3 EC2 client; on moto's own URL it sees no fault a FaultProxy injects
        gcp: FakeComputeApi | None = None,
        poll_interval_s: float = 0.5,
    ) -> None:
        self.logs_dir = logs_dir
        self.ports_from = ports_from
        self.vcpus_by_instance_type = dict(vcpus_by_instance_type)
        self.poll_interval_s = poll_interval_s
        self.poll_errors = 0  # listing a cloud or booting an instance failed; tried again on the next poll
        self._listers: dict[str, Callable[[], list[RunningInstance]]] = {}
        if ec2 is not None:
            self._listers["aws"] = functools.partial(running_on_aws, ec2)
        if gcp is not None:
            self._listers["gcp"] = functools.partial(running_on_gcp, gcp)
        self._machines: dict[str, EmulatedMachine] = {}  # by marker
        self._failing: Callable[[RunningInstance], bool] | None = None
        self._booted_count = 0  # machines booted so far, for their addresses
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._poll_until_stopped, name="instance-runner", daemon=True)

    def start(self) -> InstanceRunner:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and kill every emulated machine."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(JOIN_TIMEOUT_S)
        with self._lock:
            for marker in list(self._machines):
                self._kill(marker)

    def __enter__(self) -> InstanceRunner:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def fail_next_boot(self, matches: Callable[[RunningInstance], bool]) -> None:
        """Boot the next instance that `matches` with a script that exits before starting Ray."""
        with self._lock:
            self._failing = matches

    def booted(self) -> set[str]:
        """The ids of the instances booted and not yet killed."""
        with self._lock:
            return {machine.instance.instance_id for machine in self._machines.values()}

    def _poll_until_stopped(self) -> None:
        while not self._stopping.wait(self.poll_interval_s):
            self._reap_scripts()
            for cloud, list_running in self._listers.items():
                try:
                    self._reconcile(cloud, list_running())
                except Exception:
                    self.poll_errors += 1
                    log.exception("instance runner: polling %s failed", cloud)

    def _reconcile(self, cloud: str, running: list[RunningInstance]) -> None:
        by_marker = {instance.marker: instance for instance in running}
        with self._lock:
            gone = [
                m for m, machine in self._machines.items() if machine.instance.cloud == cloud and m not in by_marker
            ]
            for marker in gone:
                self._kill(marker)
            new = [instance for marker, instance in by_marker.items() if marker not in self._machines]
        for instance in new:
            try:
                self._boot(instance)
            except Exception:
                self.poll_errors += 1
                log.exception("instance runner: booting %s failed", instance.marker)

    def _boot(self, instance: RunningInstance) -> None:
        script = instance.read_boot_script()
        with self._lock:
            if self._failing is not None and self._failing(instance):
                self._failing = None
                script = FAILING_BOOT_SCRIPT
        vcpus = self.vcpus_by_instance_type[instance.instance_type]
        name = f"{instance.cloud}-{re.sub(r'[^A-Za-z0-9._-]', '-', instance.instance_id)}"
        script_path = self.logs_dir / f"boot-{name}.sh"
        script_path.write_text(script)
        with self._lock:
            if self._stopping.is_set():
                return
            taken = {machine.block_index for machine in self._machines.values()}
            block_index = next(index for index in range(len(taken) + 1) if index not in taken)
            block = self.ports_from + block_index * PORTS_PER_NODE
            address = machine_address(self._booted_count)
            self._booted_count += 1
            env = {
                **os.environ,
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "MERIDIAN_BOOT_LOG": str(self.logs_dir / f"boot-{name}.log"),
                "MERIDIAN_RAY_START_ARGS": " ".join([*node_port_flags(block, address), "--num-cpus", str(vcpus)]),
                MARKER_VARIABLE: instance.marker,
            }
            # What the script prints before redirecting itself to MERIDIAN_BOOT_LOG: the VM's console.
            with open(self.logs_dir / f"console-{name}.log", "ab") as console:
                process = subprocess.Popen(
                    ["bash", str(script_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.logs_dir,
                    start_new_session=True,
                )
            self._machines[instance.marker] = EmulatedMachine(instance, block_index, process)
        kind = instance.instance_type
        log.info("booted %s (%s, %d vCPUs, %s, ports from %d)", instance.marker, kind, vcpus, address, block)

    def _kill(self, marker: str) -> None:
        """The machine disappears: every process it ran, at once. Call holding the lock."""
        machine = self._machines.pop(marker)
        kill_marked(marker)
        try:
            machine.script.wait(timeout=KILL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("%s: boot script pid %d outlives SIGKILL", marker, machine.script.pid)
        log.info("killed %s", marker)

    def _reap_scripts(self) -> None:
        with self._lock:
            machines = list(self._machines.values())
        for machine in machines:
            if machine.script.returncode is None and machine.script.poll() not in (None, 0):
                log.warning("%s: boot script exited %d", machine.instance.marker, machine.script.returncode)
