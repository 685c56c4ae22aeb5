"""The in-region replica choice (geo_router/policy/replica_affinity.py), known answers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from geo_router.live.prompt import prefix_blocks, prompt_text
from geo_router.live.serve_replica_router import SharedAffinity, request_blocks
from geo_router.policy.replica_affinity import ReplicaAffinity, ReplicaAffinityConfig
from meridian_core.contracts import MalformedMessage, ReplicaPick

IDLE = {"a": 0, "b": 0}


def test_a_prefix_stays_on_its_replica_while_the_other_is_idler():
    affinity = ReplicaAffinity()
    assert affinity.choose(IDLE, [1, 2, 3], 0.0) == "a"
    assert affinity.choose({"a": 5, "b": 0}, [1, 2, 3, 4], 1.0) == "a"


def test_load_decides_past_the_imbalance_bound():
    affinity = ReplicaAffinity(ReplicaAffinityConfig(max_imbalance=4))
    assert affinity.choose(IDLE, [1, 2, 3], 0.0) == "a"
    assert affinity.choose({"a": 5, "b": 0}, [1, 2, 3], 1.0) == "b"


def test_a_new_conversation_goes_to_the_replica_with_the_least_new_prefill_lately():
    affinity = ReplicaAffinity()
    assert affinity.choose(IDLE, [1, 2, 3, 4], 0.0) == "a"  # a: 4 new blocks
    assert affinity.choose(IDLE, [10, 11], 0.0) == "b"  # b: 2
    assert affinity.choose({"a": 0, "b": 3}, [20, 21, 22], 0.0) == "b"  # fewer new blocks, though busier
    # Two half-lives on, a's 4 weigh 1 and b's 5 weigh 1.25.
    assert affinity.choose(IDLE, [30], 7200.0) == "a"


def test_a_short_shared_prefix_counts_as_a_new_conversation():
    affinity = ReplicaAffinity()
    affinity.choose(IDLE, list(range(20)), 0.0)  # a
    # One block of 20 in common is under `min_match` (10%): b has done less.
    assert affinity.choose(IDLE, [0, *range(100, 119)], 1.0) == "b"


def test_memory_is_bounded_and_keeps_a_prompts_head():
    affinity = ReplicaAffinity(ReplicaAffinityConfig(remembered_blocks=3))
    assert affinity.choose(IDLE, [1, 2, 3, 4, 5], 0.0) == "a"
    assert affinity.choose(IDLE, [40, 41, 42, 43, 44], 0.0) == "b"
    # a remembers 1, 2, 3 of the first prompt: its head still matches.
    assert affinity.choose(IDLE, [1, 2, 3, 9, 9], 1.0) == "a"


def test_a_replica_gone_is_forgotten():
    affinity = ReplicaAffinity()
    affinity.choose(IDLE, [1, 2, 3], 0.0)
    affinity.retain(["b", "c"])
    assert affinity.choose({"b": 0, "c": 0}, [1, 2, 3], 1.0) == "b"
    affinity.retain(["a", "b", "c"])
    assert affinity.choose({"a": 0, "b": 1, "c": 1}, [7, 8, 9], 2.0) == "a"  # a comes back empty


def test_the_serve_router_keys_a_body_as_the_geo_router_keys_its_prompt():
    messages = [{"role": "system", "content": "You are terse. " * 40}, {"role": "user", "content": "Hi"}]
    blocks = request_blocks(SimpleNamespace(args=[SimpleNamespace(model="m", messages=messages)]))
    assert blocks and blocks == list(prefix_blocks(prompt_text({"messages": messages})))
    assert request_blocks(SimpleNamespace(args=[])) == []
    assert request_blocks(None) == []


def test_the_shared_memory_answers_a_pick_and_refuses_a_malformed_one():
    shared = SharedAffinity(ReplicaAffinityConfig().model_dump())
    pick = ReplicaPick(replicas=["a", "b"], requests={"a": 0, "b": 0}, blocks=[1, 2, 3])
    assert shared.choose(pick.model_dump()) == "a"
    assert shared.choose(pick.model_copy(update={"requests": {"a": 3, "b": 0}}).model_dump()) == "a"  # its prefix
    for bad in ({"requests": {}}, {"requests": {"a": -1}}, {"blocks": [-1]}, {"blocks": list(range(65))}):
        with pytest.raises(MalformedMessage):
            shared.choose(pick.model_dump() | bad)
