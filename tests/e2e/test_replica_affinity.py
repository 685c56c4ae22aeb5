"""A region of two replicas keeps each conversation on one replica and spreads the
conversations, on a real local platform of its own (e2e-affinity.yaml): the official
client through the router, the region's HAProxy asking the replica router, vLLM CPU."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import httpx
from openai import OpenAI

from meridian_core.spec import PlatformSpec
from meridian_host.ray_nodes import PORTS_PER_NODE, component_ports

from .conftest import platform_of_its_own

SPEC_PATH = Path(__file__).with_name("e2e-affinity.yaml")
TOPICS = ("the history of Rome", "how volcanoes form", "the rules of chess", "photosynthesis")
TURNS = 3
READY_TIMEOUT_S = 300.0
# HAProxy's count of requests it forwarded to each replica the replica router picked.
SESSIONS = re.compile(
    r'haproxy_server_sessions_total\{proxy="[^"]*-via-ingress-request-router",server="(SERVE_REPLICA[^"]*)"\} (\S+)'
)


spec, platform = platform_of_its_own(SPEC_PATH)


def forwarded(spec: PlatformSpec) -> Counter[str]:
    """Requests HAProxy has forwarded to each replica, from its Prometheus endpoint."""
    block = spec.ray.node_ports_from + spec.cluster_ports(spec.regions[0]).head_block * PORTS_PER_NODE
    metrics_port = component_ports(block)[-1]
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    return Counter({server: int(float(value)) for server, value in SESSIONS.findall(text)})


def ask(client: OpenAI, spec: PlatformSpec, system: str, question: str) -> None:
    answer = client.chat.completions.create(
        model=spec.models[0].id,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        max_tokens=4,
    )
    assert answer.choices[0].message.content is not None


def wait_for_the_replica_router(client: OpenAI, spec: PlatformSpec) -> None:
    """`up` returns with one replica ready; the second, and the app's ingress request
    routers, start after it. Until a router answers, HAProxy balances by itself."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        before = forwarded(spec)
        ask(client, spec, "Warm-up.", "Hi?")
        if len(before) == 2 and sum((forwarded(spec) - before).values()) == 1:
            return
        assert time.monotonic() < deadline, f"the replica router did not take requests in {READY_TIMEOUT_S:.0f} s"
        time.sleep(2)


def test_each_conversation_stays_on_one_replica_and_conversations_spread(spec, platform):
    client = OpenAI(base_url=f"{platform.router_url}/v1", api_key="unused", timeout=120)
    wait_for_the_replica_router(client, spec)
    replicas_of_topic: dict[str, set[str]] = {}
    for topic in TOPICS:
        before = forwarded(spec)
        system = f"You are an expert on {topic}. " * 40  # several prompt blocks in common
        for turn in range(TURNS):
            ask(client, spec, system, f"Fact {turn}?")
        sent = forwarded(spec) - before
        assert sum(sent.values()) == TURNS  # every turn went through the replica router
        replicas_of_topic[topic] = set(sent)
    assert all(len(replicas) == 1 for replicas in replicas_of_topic.values()), replicas_of_topic
    assert len(set().union(*replicas_of_topic.values())) == 2, replicas_of_topic
