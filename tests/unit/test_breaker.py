from geo_router.live.breaker import CircuitBreaker


def test_opens_after_threshold_and_closes_after_a_probe_past_open_s():
    breaker = CircuitBreaker(failure_threshold=2, open_s=2.0)
    breaker.record_failure(now=0.0)
    assert not breaker.is_open
    breaker.record_failure(now=0.1)
    assert breaker.is_open
    breaker.record_probe_success(now=1.0)  # too soon: stays open
    assert breaker.is_open
    breaker.record_probe_success(now=2.2)
    assert not breaker.is_open and breaker.failures == 0


def test_a_failed_half_open_probe_reopens_for_twice_as_long():
    breaker = CircuitBreaker(failure_threshold=1, open_s=2.0, max_open_s=5.0)
    breaker.record_failure(now=0.0)
    breaker.record_failure(now=1.0)  # still open: changes nothing
    breaker.record_failure(now=2.5)  # half-open, and the probe failed
    assert breaker.open_for_s == 4.0
    breaker.record_probe_success(now=6.0)
    assert breaker.is_open
    breaker.record_failure(now=6.6)
    assert breaker.open_for_s == 5.0  # capped
    breaker.record_probe_success(now=11.7)
    assert not breaker.is_open and breaker.open_for_s == 2.0  # closed: the next opening starts short again


def test_request_success_resets_the_count_only_while_closed():
    breaker = CircuitBreaker(failure_threshold=3)
    breaker.record_failure(now=0)
    breaker.record_failure(now=0)
    breaker.record_inference_success(now=0)
    breaker.record_failure(now=0)
    assert not breaker.is_open


def test_a_request_answered_while_open_proves_nothing_until_half_open():
    # A request in flight when the breaker opened may finish well; it closes nothing.
    breaker = CircuitBreaker(failure_threshold=2, open_s=2.0)
    breaker.record_failure(now=0.0)
    breaker.record_failure(now=0.1, by_request=True)
    assert breaker.is_open and breaker.failures == 2
    breaker.record_inference_success(now=1.0)
    assert breaker.is_open and breaker.opened_at == 0.1
    breaker.record_inference_success(now=2.2)
    assert not breaker.is_open


def test_a_breaker_failed_requests_opened_ignores_good_status_polls():
    """A region whose /status looks fine while its inference hangs gets no traffic back
    for a good poll: only an answered request or inference probe closes its breaker."""
    breaker = CircuitBreaker(open_s=2.0)
    breaker.record_failure(now=0.0, by_request=True)
    breaker.record_probe_success(now=10.0)
    assert breaker.is_open
    breaker.record_inference_success(now=10.0)
    assert not breaker.is_open
    breaker.record_failure(now=20.0)  # opened by a poll this time
    breaker.record_probe_success(now=22.0)
    assert not breaker.is_open
