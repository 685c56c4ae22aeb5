"""End to end on a real local platform: the official openai client through the geo
router to vLLM in Ray Serve, region choice, embeddings and tool calling, failover when a
region's app is deleted, bad input, and a `down` that leaves nothing behind.

The tests run in file order; the last ones take regions away and stop the platform.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from geo_router.live.usage import UsageEventFilter, used_tokens
from meridian import launcher
from meridian.serve_config import serve_config
from meridian_core.spec import PlatformSpec, model_app_name, model_route
from meridian_host import processes, ray_nodes
from meridian_host.platform_state import LocalNodes, PlatformState
from meridian_host.region_tokens import dashboard_headers, ray_auth_env, region_token

from .conftest import SPEC_PATH

# SmolLM2-135M (Q4) answers this reliably only greedily and with a short system prompt.
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]
PARIS = "48.85,2.35"
BIN = Path(sys.executable).parent
SMOLLM2_135M_HIDDEN_SIZE = 576
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
def client(platform: PlatformState) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{platform.router_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def model(spec: PlatformSpec) -> str:
    return spec.models[0].id


@pytest.fixture
def embed_model(spec: PlatformSpec) -> str:
    (model,) = [m.id for m in spec.models if m.task == "embed"]
    return model


def test_chat_completion_answers_paris(client, model):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=QUESTION, temperature=0, max_tokens=64)
    answer = raw.parse()
    assert "Paris" in answer.choices[0].message.content
    assert answer.usage.completion_tokens > 0
    assert raw.headers["x-meridian-region"] == "local/us-east"  # the default location is Ashburn


def test_streaming_chat_completion_answers_paris(client, model):
    stream = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=64, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len(pieces) > 3  # it arrived as a stream, not one block
    assert "Paris" in "".join(pieces)


def test_completions_endpoint(client, model):
    raw = client.completions.with_raw_response.create(
        model=model, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert "Paris" in completion.choices[0].text
    assert 0 < completion.usage.completion_tokens <= 8
    assert completion.usage.prompt_tokens > 0
    assert raw.headers["x-meridian-region"] == "local/us-east"


def test_european_client_is_served_from_eu_west(client, model):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=QUESTION, max_tokens=16, extra_headers={"X-Client-Location": PARIS}
    )
    assert raw.headers["x-meridian-region"] == "local/eu-west"
    assert raw.parse().choices[0].message.content


def test_models_lists_the_served_models(spec, client):
    assert [m.id for m in client.models.list().data] == [m.id for m in spec.models]


def test_a_model_is_retrieved_by_id(client, model, embed_model):
    card = client.models.retrieve(model)
    assert (card.id, card.object, card.to_dict()["ready"]) == (model, "model", True)
    assert client.models.retrieve(embed_model).id == embed_model
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_embeddings_are_the_models_hidden_state(client, embed_model):
    raw = client.embeddings.with_raw_response.create(
        model=embed_model, input=["The capital of France is Paris.", "Bonjour"]
    )
    result = raw.parse()
    vectors = [item.embedding for item in result.data]
    assert [item.index for item in result.data] == [0, 1]
    assert [len(v) for v in vectors] == [SMOLLM2_135M_HIDDEN_SIZE] * 2
    assert all(math.isfinite(x) for v in vectors for x in v)
    assert all(abs(math.hypot(*v) - 1.0) < 1e-3 for v in vectors)  # vLLM normalizes the pooled state
    assert vectors[0] != vectors[1]
    assert result.usage.prompt_tokens > 0
    assert raw.headers["x-meridian-region"] == "local/us-east"


def test_chat_completion_with_tools(client, model):
    """vLLM refuses tool_choice "auto" unless its engine was started with
    enable_auto_tool_choice and a tool_call_parser: the model's engine_options got there."""
    answer = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="auto",
        temperature=0,
        max_tokens=64,
    )
    message = answer.choices[0].message
    assert message.content or message.tool_calls
    assert answer.usage.completion_tokens > 0


def test_an_engines_error_keeps_its_message_without_the_serving_stacks_internals(client, model):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=model, messages=QUESTION, max_tokens=100_000)
    message = error.value.body["message"]
    assert message and "2048" in message  # vLLM's own words: the model's context length
    assert "Internal exception" not in message and "ray." not in message and "Request ID" not in message


def test_the_router_reads_the_usage_a_real_answer_reports(client, model):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=QUESTION, max_tokens=8)
    assert used_tokens(raw.http_response.content) == raw.parse().usage.total_tokens


def test_a_regions_status_says_which_model_each_replica_serves(platform):
    """What the router counts a model's slots from: not the region's embedding replicas."""
    deadline = time.monotonic() + 30  # a poll whose engine stats timed out lists fewer
    while True:
        status = launcher.router_regions(platform)["local/us-east"].status
        served = sorted(replica.model for replica in status.per_replica)
        if served == sorted(status.models) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert served == sorted(status.models)  # one replica of each model


def test_a_real_streams_usage_event_is_read_and_is_the_only_event_taken_out(platform, model):
    """What the router relies on to settle a stream's token charge for a client that did
    not ask for usage: vLLM's usage event, alone in having no choices."""
    body = {"model": model, "messages": QUESTION, "max_tokens": 8, "stream": True}
    asked = {**body, "stream_options": {"include_usage": True}}
    raw = httpx.post(f"{platform.router_url}/v1/chat/completions", json=asked, timeout=60).content
    events = UsageEventFilter()
    kept = events.feed(raw) + events.rest()
    chunks = [json.loads(e.removeprefix(b"data: ")) for e in raw.split(b"\n\n") if e and e != b"data: [DONE]"]
    assert used_tokens(raw) == chunks[-1]["usage"]["total_tokens"] > 8 and chunks[-1]["choices"] == []
    kept_chunks = [json.loads(e.removeprefix(b"data: ")) for e in kept.split(b"\n\n") if e and e != b"data: [DONE]"]
    assert kept_chunks == chunks[:-1] and kept.endswith(b"data: [DONE]\n\n")


@pytest.fixture
def keyed_router(platform, spec, tmp_path) -> Iterator[str]:
    """A second router on the running regions, with one API key allowed 1,500 tokens a
    minute: its URL. The same spec on another port, started as `meridian up` starts one."""
    data = yaml.safe_load(SPEC_PATH.read_text())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    keys = [{"name": "e2e", "sha256": hashlib.sha256(b"sk-e2e").hexdigest(), "tokens_per_minute": 1500}]
    data["router"].update(port=port, auth={"keys": keys})
    keyed_spec = tmp_path / "keyed.yaml"
    keyed_spec.write_text(yaml.safe_dump(data))
    env = os.environ | launcher.region_tokens(spec, platform) | {spec.router.auth.admin_token_env: "e2e-admin"}
    with (tmp_path / "router.log").open("wb") as log:
        router = subprocess.Popen(
            [sys.executable, "-m", "geo_router", str(keyed_spec)], stdout=log, stderr=log, env=env
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _healthy(url):
            assert router.poll() is None and time.monotonic() < deadline, (tmp_path / "router.log").read_text()[-2000:]
            time.sleep(0.5)
        yield url
    finally:
        router.terminate()
        router.wait(30)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).json().get("healthy_regions") == [
            "local/us-east",
            "local/eu-west",
        ]
    except (httpx.HTTPError, ValueError):
        return False


def test_a_keys_token_charge_is_settled_on_real_streams_whose_usage_its_client_never_sees(keyed_router, model):
    """Each stream is charged its prompt and its 600-token cap ahead, more than a third of
    the key's minute; settled on what vLLM says it used (a sentence: it stops at the first
    full stop), four in a row fit. The usage event the router asked for on the client's
    behalf never reaches the client."""
    client = openai.OpenAI(base_url=f"{keyed_router}/v1", api_key="sk-e2e", max_retries=0, timeout=120)
    for _ in range(4):
        stream = client.chat.completions.create(
            model=model, messages=QUESTION, temperature=0, max_tokens=600, stop=["."], stream=True
        )
        chunks = list(stream)
        assert chunks and all(chunk.choices and chunk.usage is None for chunk in chunks)
        assert "Paris" in "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    with pytest.raises(openai.RateLimitError, match="set max_tokens lower"):
        client.chat.completions.create(model=model, messages=QUESTION, max_tokens=1600)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed_router}/v1", api_key="sk-wrong", max_retries=0).models.list()


def engines_running(platform) -> dict[str, int | None]:  # type: ignore[no-untyped-def]
    """Each region's count of requests its engines run, as the router last polled it; None unknown."""
    seen = launcher.router_regions(platform)
    return {
        name: status.engine.running if (status := getattr(seen.get(name), "status", None)) else None
        for name in platform.clusters
    }


def test_a_client_gone_before_the_first_byte_frees_the_engine(platform, model):
    """A long non-streamed generation whose client gives up: the router closes the
    region's request and vLLM drops it, long before it could have finished. Whichever
    region the scorer chose: the earlier tests' load may move it off Ashburn's."""
    body = {"model": model, "messages": QUESTION, "max_tokens": 1900, "ignore_eos": True}
    gone = [
        f'meridian_router_requests_total{{model="{model}",region="{name}",status="499"}}' for name in platform.clusters
    ]
    before = sum(metric(httpx.get(f"{platform.router_url}/metrics").text, sample) for sample in gone)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{platform.router_url}/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=2.0))
    deadline = time.monotonic() + 10  # 1,900 tokens take this engine far longer
    while set((engines := engines_running(platform)).values()) != {0}:
        assert time.monotonic() < deadline, f"engines still run requests for a client that left: {engines}"
        time.sleep(0.5)
    scraped = httpx.get(f"{platform.router_url}/metrics").text
    assert sum(metric(scraped, sample) for sample in gone) == before + 1


def metric(scraped: str, sample: str) -> float:
    """A sample's value on a /metrics page; 0 when absent."""
    found = [line.rsplit(" ", 1)[1] for line in scraped.splitlines() if line.startswith(sample + " ")]
    return float(found[0]) if found else 0.0


def test_responses_api_is_404(client, model):
    with pytest.raises(openai.NotFoundError) as error:
        client.responses.create(model=model, input="hi")
    assert error.value.body["code"] == "unsupported_endpoint"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    assert error.value.status_code == 404
    assert error.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    "content, param",
    [
        (b"{not json", None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "x"}', "messages"),
    ],
)
def test_bad_bodies_are_400(platform, content, param):
    response = httpx.post(
        f"{platform.router_url}/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_up_again_is_safe(platform):
    state, already_up = launcher.up(SPEC_PATH)
    assert already_up
    assert (state.clusters, state.router_pid, state.global_loop_pid) == (
        platform.clusters,
        platform.router_pid,
        platform.global_loop_pid,
    )


def test_a_stopped_capacity_loop_is_restarted_alone_and_loses_no_node(platform):
    east = platform.clusters["local/us-east"]
    nodes = LocalNodes.load(platform, east.slug).nodes
    processes.terminate_group(east.capacity_pid)
    state, already_up = launcher.up(SPEC_PATH)
    assert not already_up
    restarted = state.clusters["local/us-east"]
    assert restarted.capacity_pid != east.capacity_pid and processes.is_running(restarted.capacity_pid)
    assert (restarted.head_pid, state.router_pid) == (east.head_pid, platform.router_pid)
    assert LocalNodes.load(platform, east.slug).nodes == nodes  # the same node, re-adopted
    assert all(processes.is_running(node.pid) for node in nodes.values())
    platform.clusters["local/us-east"] = restarted  # what the tests after this one stop


def test_status_json(spec, platform):
    result = subprocess.run(
        [str(BIN / "meridian"), "status", str(SPEC_PATH), "--json"], capture_output=True, text=True, check=True
    )
    report = json.loads(result.stdout)
    assert report["running"] and report["router_url"] == platform.router_url
    for region in report["regions"]:
        assert region["healthy"], region
        assert region["cluster"] == platform.clusters[region["name"]].gcs_address
        assert region["nodes"] == {"local on_demand": 1}
        assert region["replica_states"] == {"RUNNING": len(spec.models)}  # one replica of each model
        assert region["ready_replicas"] == len(spec.models)
        assert 0.0 <= region["engine"]["kv_cache_usage"] <= 1.0


def test_each_region_is_its_own_cluster_and_its_replicas_run_on_its_node(spec, platform):
    assert len({cluster.gcs_address for cluster in platform.clusters.values()}) == 2
    for cluster in platform.clusters.values():
        url, params = f"{cluster.dashboard_url}/api/v0/nodes", {"limit": 100}
        # Each cluster takes Ray's token authentication: no token, no answer.
        assert httpx.get(url, params=params, timeout=10).status_code == 401
        nodes = httpx.get(url, params=params, headers=dashboard_headers(platform, cluster), timeout=10).json()
        alive = [n for n in nodes["data"]["result"]["result"] if n["state"] == "ALIVE"]
        region_of_node = {n["node_id"]: (n.get("labels") or {}).get(ray_nodes.REGION_LABEL) for n in alive}
        # Its head (no region label) and its one region node; no other region's node.
        assert sorted(region_of_node.values(), key=str) == sorted([None, cluster.slug], key=str)
        apps = launcher.serve_applications(platform, cluster)
        assert set(apps) == {cluster.slug, *(model_app_name(cluster.slug, m.id) for m in spec.models)}
        placed = {
            (app_name, name): [region_of_node[r["node_id"]] for r in deployment["replicas"]]
            for app_name, app in apps.items()
            for name, deployment in app["deployments"].items()
        }
        # The control app on the head, so the region answers while it has no node; each
        # model's app one LLMServer on the region's node.
        assert placed.pop((cluster.slug, "RegionControl")) == [None]
        assert list(placed.values()) == [[cluster.slug]] * len(spec.models)


def test_a_models_own_app_answers_only_the_regions_token_holders(spec, platform, model):
    """The router reaches each model's replicas at their own route, where vLLM's app
    answers; the region token guards it as it guards /status."""
    region = spec.regions[0]
    url = f"{spec.region_endpoint(region)}{model_route(model)}/v1/completions"
    body = {"model": model, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = httpx.post(url, json=body, headers=headers, timeout=30)
        assert refused.status_code == 401
        assert refused.json()["error"]["message"] == "a valid region token is required"
    token = {"Authorization": f"Bearer {region_token(platform, region)}"}
    answered = httpx.post(url, json=body, headers=token, timeout=60)
    assert answered.status_code == 200 and answered.json()["object"] == "text_completion"


def test_with_usage_stats_off_no_cluster_runs_ray_serve_llms_telemetry_actor(spec, platform):
    assert not spec.ray.usage_stats
    for cluster in platform.clusters.values():
        listed = httpx.get(
            f"{cluster.dashboard_url}/api/v0/actors",
            params={"limit": 1000},
            headers=dashboard_headers(platform, cluster),
            timeout=10,
        ).json()
        alive = {actor["class_name"] for actor in listed["data"]["result"]["result"] if actor["state"] == "ALIVE"}
        assert "ServeController" in alive  # the listing is the cluster's
        assert "TelemetryAgent" not in alive


def redeploy_without(spec: PlatformSpec, platform: PlatformState, slugs: set[str]) -> None:
    """Deploy to each named region's cluster its Serve config without its app; Serve
    deletes an app its config omits, draining the replicas' requests first."""
    for slug in slugs:
        region = spec.region(slug)
        config = {**serve_config(spec, region), "applications": []}
        path = platform.cluster_dir(slug) / "serve-shrunk.yaml"
        path.write_text(yaml.safe_dump(config))
        cluster = platform.clusters[region.name]
        env = {**os.environ, **ray_auth_env(platform, cluster)}
        subprocess.run(
            [str(BIN / "serve"), "deploy", str(path), "--address", cluster.dashboard_url], check=True, env=env
        )


def test_no_failed_request_when_a_region_is_deleted_midway(spec, platform, client, model):
    """us-east's app is deleted while streams are running on it: the streams already
    flowing finish (Serve drains a deleted app's replicas), and every request after
    goes to eu-west. No request fails."""
    streaming = 6
    first_chunks = threading.Barrier(streaming + 1, timeout=120)

    def stream(i: int) -> tuple[str, str]:
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": f"Write a long story about the number {i}."}],
            max_tokens=48,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        pieces, waited = [], False
        for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                if not waited:
                    waited = True
                    first_chunks.wait()
        return raw.headers["x-meridian-region"], "".join(pieces)

    regions, stream_regions, failures = [], [], []
    with concurrent.futures.ThreadPoolExecutor(streaming) as pool:
        in_flight = [pool.submit(stream, i) for i in range(streaming)]
        first_chunks.wait()  # every stream has its first token: all are mid-answer on us-east
        redeploy_without(spec, platform, {"local-us-east"})
        for future in in_flight:
            try:
                region, text = future.result(timeout=300)
                assert text
                stream_regions.append(region)
            except (openai.APIError, AssertionError) as error:
                failures.append(f"in-flight stream: {error!r}")
    for i in range(12):
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": f"Count to {i % 5 + 2}."}], max_tokens=8
            )
            assert raw.parse().choices[0].message.content is not None
            regions.append(raw.headers["x-meridian-region"])
        except openai.APIError as error:
            failures.append(f"request {i}: {error}")
    assert failures == []
    assert "local/us-east" in stream_regions  # the deletion did catch streams mid-answer there
    assert regions[-6:] == ["local/eu-west"] * 6  # the deleted region no longer gets traffic


def wait_until_deleted(spec: PlatformSpec, platform: PlatformState, slugs: set[str]) -> None:
    """Wait until the named regions' clusters run no Serve app: a deleted app's
    replicas still answer the requests they get while they drain."""
    clusters = [platform.clusters[spec.region(slug).name] for slug in slugs]
    deadline = time.monotonic() + 120
    while any(launcher.serve_applications(platform, cluster) for cluster in clusters):
        assert time.monotonic() < deadline, "Serve did not delete the regions' apps in 120 s"
        time.sleep(1)


def test_no_region_left_is_503_with_retry_after(spec, platform, model):
    slugs = {"local-us-east", "local-eu-west"}
    redeploy_without(spec, platform, slugs)
    wait_until_deleted(spec, platform, slugs)
    body = {"model": model, "messages": QUESTION}
    response = httpx.post(f"{platform.router_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_healthy_region"
    assert int(response.headers["retry-after"]) >= 1


def test_down_leaves_no_process_behind(spec, platform):
    clusters = platform.clusters.values()
    pids = [platform.router_pid, platform.global_loop_pid]
    pids += [pid for cluster in clusters for pid in (cluster.head_pid, cluster.capacity_pid)]
    pids += [node.pid for cluster in clusters for node in LocalNodes.load(platform, cluster.slug).nodes.values()]
    assert all(processes.is_running(pid) for pid in pids) and len(pids) == 8
    launcher.down(spec.name)
    assert processes.marked_processes(platform.platform_id) == []
    for pid in pids:
        assert not processes.is_running(pid)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{platform.router_url}/healthz", timeout=2)
    assert PlatformState.load(spec.name) is None
