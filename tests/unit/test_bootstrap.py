"""The boot script a cloud node runs, run here by bash with a stand-in `ray` that
records how it was called: the cluster's token reaches `ray start` through the
environment Ray reads it from, and the host's own flags are appended as words."""

from __future__ import annotations

import os
import subprocess

from capacity.live.bootstrap import RayJoin, ray_join_script
from meridian_host.serve_mode import serve_mode_env

RECORDING_RAY = (
    '#!/bin/bash\necho "mode=$RAY_AUTH_MODE token=$RAY_AUTH_TOKEN"\n'
    'echo "haproxy=${RAY_SERVE_ENABLE_HA_PROXY:-} throughput=${RAY_SERVE_THROUGHPUT_OPTIMIZED:-}"\n'
    'printf "%s\\n" "$@"\n'
)


def boot(tmp_path, join: RayJoin, host_flags: str) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ray").write_text(RECORDING_RAY)
    (bin_dir / "ray").chmod(0o755)
    script = ray_join_script(join, cloud="aws", zone="us-east-1a", market="spot", node_label="n-1")
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "MERIDIAN_BOOT_LOG": str(tmp_path / "boot.log"),
        "MERIDIAN_RAY_START_ARGS": host_flags,
    }
    subprocess.run(["bash", "-c", script], env=env, check=True, timeout=30)
    return (tmp_path / "boot.log").read_text().splitlines()


def test_the_node_joins_with_the_clusters_token_and_the_hosts_flags(tmp_path):
    join = RayJoin(head_address="10.0.0.5:6379", region_slug="aws-us-east-1", auth_token="t0k'en$HOME")
    recorded = boot(tmp_path, join, "--num-cpus 8 --node-manager-port 30094")
    assert recorded == [
        "mode=token token=t0k'en$HOME",  # quoted: the token is passed as it is
        "haproxy= throughput=",
        "start",
        "--address=10.0.0.5:6379",
        '--resources={"region:aws-us-east-1": 1000}',
        "--labels=meridian.io/region=aws-us-east-1,meridian.io/node=n-1,meridian.io/cloud=aws,"
        "meridian.io/zone=us-east-1a,meridian.io/market=spot",
        "--num-cpus",
        "8",
        "--node-manager-port",
        "30094",
    ]


def test_a_cluster_without_a_token_is_joined_without_one(tmp_path):
    recorded = boot(tmp_path, RayJoin(head_address="10.0.0.5:6379", region_slug="aws-us-east-1"), "")
    assert recorded[0] == "mode= token="
    assert "RAY_AUTH" not in ray_join_script(RayJoin("h:1", "s"), cloud="aws", zone="z", market="spot", node_label="n")


def test_the_node_starts_ray_in_the_clusters_serve_mode(tmp_path):
    join = RayJoin(head_address="10.0.0.5:6379", region_slug="aws-us-east-1", env=serve_mode_env(True))
    assert boot(tmp_path, join, "")[1] == "haproxy=1 throughput=1"
