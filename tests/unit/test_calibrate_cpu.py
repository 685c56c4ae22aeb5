"""benchmarks/calibrate_cpu.py: decode step time from streams whose tokens arrive coalesced."""

import asyncio
import json
import statistics

import aiohttp
import pytest
from aiohttp import web

from benchmarks.calibrate_cpu import batch_step_s, decode_step_s, stream

STEP = 0.04


def produced(first_s: float, tokens: int) -> list[float]:
    """When each of a stream's tokens comes out of the engine, one step apart."""
    return [first_s + i * STEP for i in range(tokens)]


def coalesced(token_times: list[float], sizes: list[int]) -> list[tuple[float, int]]:
    """Reads delivering `sizes` tokens each, every read arriving when its last token is out."""
    reads, end = [], 0
    for size in sizes:
        end += size
        reads.append((token_times[end - 1], size))
    return reads


def chunk_times(reads: list[tuple[float, int]]) -> list[float]:
    """The arrival time of every text chunk, as the old measurement recorded them: one chunk
    a token, all the chunks of a read at (about) the read's time."""
    return [at for at, tokens in reads for _ in range(tokens)]


def old_gap_median(streams: list[list[float]]) -> float:
    """The measurement this replaces: median gap between text chunks once all streams started."""
    all_started = max(times[0] for times in streams)
    return statistics.median(
        b - a for times in streams for a, b in zip(times, times[1:], strict=False) if a >= all_started
    )


def test_ten_tokens_in_three_reads_give_the_step():
    reads = coalesced(produced(1.0, 10), [3, 4, 3])
    assert decode_step_s(reads) == pytest.approx(STEP)
    assert batch_step_s([reads]) == pytest.approx(STEP)
    # The gap median sees mostly chunks of one read, ~0 apart: not the step.
    assert old_gap_median([chunk_times(reads)]) == pytest.approx(0.0)
    assert old_gap_median([chunk_times(reads)]) != pytest.approx(STEP)


def test_any_grouping_gives_the_same_step():
    times = produced(5.0, 32)
    for sizes in ([1] * 32, [1, 31], [2] * 16, [5, 1, 7, 3, 16], [31, 1]):
        assert decode_step_s(coalesced(times, sizes)) == pytest.approx(STEP)


def test_one_read_has_no_step():
    assert decode_step_s([(1.0, 10)]) is None
    assert decode_step_s([]) is None
    assert decode_step_s([(1.0, 0), (2.0, 3)]) is None  # a read without tokens is no read


def test_window_keeps_only_its_reads():
    reads = coalesced(produced(0.0, 12), [2, 2, 2, 2, 2, 2])  # reads at 0.04, 0.12, ..., 0.44
    assert decode_step_s(reads, start=0.1, end=0.3) == pytest.approx(STEP)
    assert decode_step_s(reads, start=0.1, end=0.15) is None


def test_batch_step_is_taken_while_every_stream_decodes():
    # Two streams at one step; the second starts 0.2 s later. Before it starts, the first
    # ran alone at half the step: the window leaves that out.
    alone = [0.0 + i * STEP / 2 for i in range(10)]  # 10 tokens by 0.18
    together = [alone[-1] + (i + 1) * STEP for i in range(30)]
    first = coalesced(alone + together, [4, 3, 3] + [3] * 10)
    second = coalesced(produced(alone[-1] + STEP / 2, 30), [2, 4] + [3] * 8)
    assert batch_step_s([first, second]) == pytest.approx(STEP, rel=0.05)
    old = old_gap_median([chunk_times(first), chunk_times(second)])
    assert old != pytest.approx(STEP, rel=0.05)


def test_batch_step_falls_back_to_whole_streams_without_a_shared_window():
    first = coalesced(produced(0.0, 10), [5, 5])
    later = coalesced(produced(10.0, 10), [5, 5])
    assert batch_step_s([first, later]) == pytest.approx(STEP)
    assert batch_step_s([[], []]) is None


def serve_sse(writes: list[list[dict]], gap_s: float):
    """A /v1/completions that sends each list of chunks in one write, `gap_s` apart."""

    async def completions(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunks in writes:
            await asyncio.sleep(gap_s)
            await response.write(b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks))
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    return app


def run_stream(writes: list[list[dict]], gap_s: float = 0.05) -> tuple[list[tuple[float, int]], dict]:
    async def go():
        runner = web.AppRunner(serve_sse(writes, gap_s))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession() as session:
                return await stream(session, f"http://127.0.0.1:{port}", "m", "p", 10)
        finally:
            await runner.cleanup()

    return asyncio.run(go())


def text_chunk(completion_tokens: int | None) -> dict:
    chunk: dict = {"choices": [{"index": 0, "text": "x"}]}
    if completion_tokens is not None:
        chunk["usage"] = {"prompt_tokens": 4, "completion_tokens": completion_tokens}
    return chunk


FINAL = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 10}}


def test_stream_counts_the_tokens_of_each_read_from_per_chunk_usage():
    writes = [[text_chunk(n) for n in (1, 2, 3)], [text_chunk(n) for n in (4, 5, 6, 7)], [text_chunk(10), FINAL]]
    reads, usage = run_stream(writes)
    assert [tokens for _, tokens in reads] == [3, 4, 3]  # the last chunk carried three tokens
    assert usage["completion_tokens"] == 10
    assert reads[-1][0] - reads[0][0] == pytest.approx(0.1, abs=0.04)


def test_stream_without_per_chunk_usage_counts_a_token_a_text_chunk():
    writes = [[text_chunk(None)] * 3, [text_chunk(None)] * 4, [text_chunk(None)] * 3 + [FINAL]]
    reads, _ = run_stream(writes)
    assert [tokens for _, tokens in reads] == [3, 4, 3]


def test_stream_collapses_to_first_and_last_when_chunks_hide_tokens():
    # No per-chunk usage and 5 chunks for 10 tokens: only the whole stream's mean step is known.
    writes = [[text_chunk(None)] * 2, [text_chunk(None)] * 2, [text_chunk(None), FINAL]]
    reads, _ = run_stream(writes)
    assert [tokens for _, tokens in reads] == [1, 9]
