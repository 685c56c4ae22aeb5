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


def test_a_failed_half_open_probe_reopens_for_another_period():
    breaker = CircuitBreaker(failure_threshold=1, open_s=2.0)
    breaker.record_failure(now=0.0)
    breaker.record_failure(now=2.5)  # the half-open probe failed
    breaker.record_probe_success(now=3.0)
    assert breaker.is_open
    breaker.record_probe_success(now=4.6)
    assert not breaker.is_open


def test_request_success_resets_the_count_only_while_closed():
    breaker = CircuitBreaker(failure_threshold=3)
    breaker.record_failure(now=0)
    breaker.record_failure(now=0)
    breaker.record_request_success()
    breaker.record_failure(now=0)
    assert not breaker.is_open


def test_request_success_leaves_an_open_breaker_open():
    # Only a health probe past open_s closes an open breaker; an answered request (one
    # sent there by panic routing, or in flight when it opened) does not, nor resets the count.
    breaker = CircuitBreaker(failure_threshold=2, open_s=2.0)
    breaker.record_failure(now=0.0)
    breaker.record_failure(now=0.1)
    assert breaker.is_open and breaker.failures == 2
    breaker.record_request_success()
    assert breaker.is_open
    assert breaker.failures == 2
    assert breaker.opened_at == 0.1
