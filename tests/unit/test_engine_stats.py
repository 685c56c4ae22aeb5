import pytest
from prometheus_client import CollectorRegistry, Gauge

from deployments.engine_stats import read_engine_stats


def test_reads_vllm_gauges_summed_over_engines():
    registry = CollectorRegistry()
    labels = ["model_name", "engine"]
    running = Gauge("vllm:num_requests_running", "", labels, registry=registry)
    waiting = Gauge("vllm:num_requests_waiting", "", labels, registry=registry)
    by_reason = Gauge("vllm:num_requests_waiting_by_reason", "", [*labels, "reason"], registry=registry)
    kv = Gauge("vllm:kv_cache_usage_perc", "", labels, registry=registry)
    running.labels("m", "0").set(3)
    running.labels("m", "1").set(2)
    waiting.labels("m", "0").set(4)
    by_reason.labels("m", "0", "capacity").set(99)  # a breakdown, not more requests
    kv.labels("m", "0").set(0.25)
    assert read_engine_stats(registry) == {"engine_metrics": True, "running": 5, "waiting": 4, "kv_cache_usage": 0.25}


def test_no_engine_yet():
    assert read_engine_stats(CollectorRegistry())["engine_metrics"] is False


def test_counters_and_latency_histograms_are_read_cumulatively():
    from prometheus_client import Counter, Histogram

    from deployments.engine_stats import read_engine_counters

    registry = CollectorRegistry()
    finished = Counter("vllm:request_success", "", ["finished_reason"], registry=registry)
    prompt = Counter("vllm:prompt_tokens", "", registry=registry)
    ttft = Histogram("vllm:time_to_first_token_seconds", "", buckets=(0.1, 1.0), registry=registry)
    finished.labels("stop").inc(3)
    finished.labels("length").inc(1)
    prompt.inc(512)
    ttft.observe(0.05)
    ttft.observe(0.5)
    counters = read_engine_counters(registry)
    assert (counters.finished, counters.prompt_tokens, counters.generation_tokens) == (4, 512, 0)
    assert counters.ttft == {0.1: 1, 1.0: 2, float("inf"): 2}
    assert counters.first_tokens == 2  # the requests whose prompt tokens are counted
    assert counters.itl == {}


def test_quantile_of_the_observations_between_two_snapshots():
    from deployments.engine_stats import bucket_quantile

    before = {0.1: 10.0, 1.0: 10.0, float("inf"): 10.0}
    after = {0.1: 10.0, 1.0: 20.0, float("inf"): 20.0}  # ten new, all in (0.1, 1]
    assert bucket_quantile(0.5, after, before) == pytest.approx(0.55)
    assert bucket_quantile(0.95, after, {}) == pytest.approx(0.1 + 0.9 * (19 - 10) / 10)
    assert bucket_quantile(0.95, before, before) is None
    # Past the last finite bound: the bound, as Prometheus answers.
    assert bucket_quantile(0.99, {1.0: 0.0, float("inf"): 5.0}, {}) == 1.0
