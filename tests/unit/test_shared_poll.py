"""A region's status poll shares one slow call per model and, when the call is slower
than the poll's deadline, answers with the last answers while they are recent."""

from __future__ import annotations

import asyncio

from deployments.shared_poll import SharedPoll


class Replicas:
    """Stands in for a model's replicas: each call answers `loads` once released."""

    def __init__(self, loads: list[dict]):
        self.loads = loads
        self.calls = 0
        self.release = asyncio.Event()
        self.fail_with: Exception | None = None

    async def __call__(self, model: str) -> list[dict]:
        self.calls += 1
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return self.loads


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_polls_that_arrive_while_a_call_runs_share_it():
    async def scenario() -> tuple[list, list, int]:
        replicas = Replicas([{"running": 1}])
        poll = SharedPoll(replicas, timeout_s=1.0, keep_s=30.0)
        first, second = asyncio.ensure_future(poll.answers("m")), asyncio.ensure_future(poll.answers("m"))
        await settle()
        replicas.release.set()
        return await first, await second, replicas.calls

    first, second, calls = asyncio.run(scenario())
    assert first == second == [{"running": 1}] and calls == 1


def test_a_call_slower_than_the_deadline_reports_the_last_answers_while_recent():
    async def scenario() -> tuple[list, list, list]:
        clock = Clock()
        replicas = Replicas([{"running": 2}])
        poll = SharedPoll(replicas, timeout_s=0.01, keep_s=30.0, clock=clock)
        replicas.release.set()
        answered = await poll.answers("m")
        replicas.release.clear()  # the replicas are starved: the next calls hang
        clock.now += 29.0
        while_recent = await poll.answers("m")
        clock.now += 2.0
        too_old = await poll.answers("m")
        return answered, while_recent, too_old

    answered, while_recent, too_old = asyncio.run(scenario())
    assert answered == while_recent == [{"running": 2}]
    assert too_old == []


def test_a_slow_call_that_ends_after_its_poll_gave_up_still_counts():
    async def scenario() -> list:
        replicas = Replicas([{"running": 3}])
        poll = SharedPoll(replicas, timeout_s=0.01, keep_s=30.0)
        assert await poll.answers("m") == []  # nothing known yet
        replicas.release.set()
        await settle()
        replicas.release.clear()
        return await poll.answers("m")  # this poll's own call hangs: the late answers stand

    assert asyncio.run(scenario()) == [{"running": 3}]


def test_a_failed_call_forgets_what_was_known():
    async def scenario() -> tuple[list, list]:
        replicas = Replicas([{"running": 1}])
        poll = SharedPoll(replicas, timeout_s=0.01, keep_s=30.0)
        replicas.release.set()
        await poll.answers("m")
        replicas.fail_with = RuntimeError("replica died")
        failed = await poll.answers("m")
        replicas.release.clear()
        return failed, await poll.answers("m")

    failed, after = asyncio.run(scenario())
    assert failed == [] and after == []


def test_each_model_has_its_own_call_and_answers():
    async def scenario() -> dict[str, list]:
        async def call(model: str) -> list[dict]:
            return [{"model": model}]

        poll = SharedPoll(call, timeout_s=1.0, keep_s=30.0)
        return {m: await poll.answers(m) for m in ("a", "b")}

    assert asyncio.run(scenario()) == {"a": [{"model": "a"}], "b": [{"model": "b"}]}
