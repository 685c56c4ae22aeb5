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
