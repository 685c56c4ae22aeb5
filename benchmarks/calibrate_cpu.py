"""Measure a replica profile on a running vLLM OpenAI server: prefill tokens/s and decode
step time against batch size, fitted to the `meridian_core.replica_model.ReplicaProfile` model
(step = base + per_seq · batch).

    .venv/bin/python benchmarks/calibrate_cpu.py --url http://127.0.0.1:8000 --model smollm2-135m-instruct

- Prefill: one request at a time, prompts of `--prompt-tokens` tokens (random words;
  the server's `usage.prompt_tokens` gives the true count), `max_tokens` 1, streamed;
  prefill tok/s = prompt tokens / time to first token, median of `--repeats`.
- Decode: for each batch size b, b concurrent streams with a short prompt and
  `--decode-tokens` output tokens (`ignore_eos`), started together. Servers coalesce a
  stream's tokens (Ray Serve LLM batches its chunks every 50 ms by default), so one network
  read can deliver several tokens and the gap between chunks is no step time: most are ~0.
  Each stream is therefore recorded as reads, (arrival time, output tokens delivered),
  the tokens counted from the server's per-chunk usage (`continuous_usage_stats`), and a
  stream's step is (last read − first read) / tokens delivered after the first read
  (`decode_step_s`), over the window in which all b streams are decoding; the batch's step
  is the median over its streams (`batch_step_s`).

Prints the measurements and the fitted profile fields as JSON (`--out FILE` also writes it).
It only talks to the URL it is given, with a bounded number of requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

WORDS = ("alpha", "river", "stone", "cloud", "seven", "maple", "orbit", "quartz", "delta", "ember")


def prompt_of(words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


Read = tuple[float, int]
"""One network read of a stream: (arrival time, output tokens it delivered)."""


def decode_step_s(reads: Sequence[Read], start: float = -math.inf, end: float = math.inf) -> float | None:
    """Mean decode step of one stream, from the reads that delivered its tokens.

    A read's tokens arrive together, when the last of them is out, so the time from the
    first read to the last covers exactly the steps of the tokens delivered after the
    first read, however the server grouped them. Only reads arriving within [start, end]
    count; None when fewer than two of them delivered tokens.
    """
    inside = [(at, tokens) for at, tokens in reads if tokens > 0 and start <= at <= end]
    if len(inside) < 2:
        return None
    return (inside[-1][0] - inside[0][0]) / sum(tokens for _, tokens in inside[1:])


def batch_step_s(streams: Sequence[Sequence[Read]]) -> float | None:
    """Decode step at the batch of `streams` started together: the median of the streams'
    steps over the window in which all of them are decoding (from the last stream's first
    token to the first stream's last token); over whole streams when that window holds
    fewer than two reads of every stream."""
    delivering = [[read for read in reads if read[1] > 0] for reads in streams]
    delivering = [reads for reads in delivering if reads]
    if not delivering:
        return None
    all_started = max(reads[0][0] for reads in delivering)
    first_done = min(reads[-1][0] for reads in delivering)
    steps = [step for reads in delivering if (step := decode_step_s(reads, all_started, first_done)) is not None]
    if not steps:
        steps = [step for reads in delivering if (step := decode_step_s(reads)) is not None]
    return statistics.median(steps) if steps else None


async def stream(
    session: aiohttp.ClientSession, url: str, model: str, prompt: str, max_tokens: int
) -> tuple[list[Read], dict]:
    """The stream's reads that delivered output tokens, and the server's final token usage.

    Tokens per read come from the cumulative `usage.completion_tokens` the server puts on
    every chunk (`continuous_usage_stats`); a server that does not gets one token per chunk
    with text. If those do not add up to the final usage's count (a server merging tokens
    into a chunk without per-chunk usage), the reads collapse to the first (one token) and
    the last (the rest): the stream's mean step, no longer its window.
    """
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    reads: list[Read] = []
    usage: dict = {}
    counted = 0  # completion tokens the per-chunk usage has accounted for so far
    per_chunk_usage = False
    pending = b""
    async with session.post(f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for data in response.content.iter_any():
            at = time.perf_counter()
            *lines, pending = (pending + data).split(b"\n")
            tokens = 0
            for raw in lines:
                line = raw.decode().strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                choices = chunk.get("choices") or []
                if chunk.get("usage"):
                    usage = chunk["usage"]
                    if choices:
                        per_chunk_usage = True
                        tokens += int(usage.get("completion_tokens", counted)) - counted
                        counted = int(usage.get("completion_tokens", counted))
                        continue
                if not per_chunk_usage and any(choice.get("text") for choice in choices):
                    tokens += 1
            if tokens > 0:
                reads.append((at, tokens))
    total = int(usage.get("completion_tokens", 0))
    if total and len(reads) > 1 and sum(tokens for _, tokens in reads) != total:
        reads = [(reads[0][0], 1), (reads[-1][0], total - 1)]
    return reads, usage


async def measure_prefill(session: aiohttp.ClientSession, url: str, model: str, words: int, repeats: int) -> dict:
    rates = []
    for i in range(repeats):
        begin = time.perf_counter()
        reads, usage = await stream(session, url, model, prompt_of(words, seed=i), 1)
        tokens = int(usage.get("prompt_tokens", 0))
        if reads and tokens:
            rates.append(tokens / (reads[0][0] - begin))
    return {"prefill_tokens_per_s": statistics.median(rates), "samples": rates}


async def measure_step(session: aiohttp.ClientSession, url: str, model: str, batch: int, tokens: int) -> dict:
    runs = await asyncio.gather(
        *(stream(session, url, model, prompt_of(16, seed=1000 + i), tokens) for i in range(batch))
    )
    streams = [reads for reads, _ in runs]
    step = batch_step_s(streams)
    if step is None:
        raise RuntimeError(f"batch {batch}: no stream delivered two reads of tokens")
    return {
        "step_s": step,
        "reads_per_stream": statistics.median(len(reads) for reads in streams),
        "tokens_per_stream": statistics.median(sum(tokens for _, tokens in reads) for reads in streams),
    }


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    return mean_y - slope * mean_x, slope


async def calibrate(args: argparse.Namespace) -> dict:
    timeout = aiohttp.ClientTimeout(total=args.timeout_s)
    # A region answers only its token's holders; OpenAI clients read the key from here.
    key = os.environ.get("OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else None
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        await stream(session, args.url, args.model, prompt_of(8, seed=0), 2)  # warm-up
        prefill = await measure_prefill(session, args.url, args.model, args.prompt_tokens, args.repeats)
        steps, reads = {}, {}
        for batch in args.batches:
            measured = await measure_step(session, args.url, args.model, batch, args.decode_tokens)
            steps[batch] = measured.pop("step_s")
            reads[batch] = measured
            print(
                f"batch {batch}: step {steps[batch] * 1000:.1f} ms "
                f"({measured['tokens_per_stream']:g} tokens in {measured['reads_per_stream']:g} reads a stream)",
                file=sys.stderr,
            )
    base, per_seq = fit_line([float(b) for b in steps], list(steps.values()))
    return {
        "url": args.url,
        "model": args.model,
        "prefill": prefill,
        "decode_step_s_by_batch": steps,
        "decode_reads_by_batch": reads,
        "profile_fields": {
            "prefill_tokens_per_s": round(prefill["prefill_tokens_per_s"], 1),
            "decode_base_s": round(max(base, 0.0), 5),
            "decode_per_seq_s": round(max(per_seq, 0.0), 6),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="base URL of a vLLM OpenAI server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", required=True, help="served model name")
    parser.add_argument("--prompt-tokens", type=int, default=1024, help="prompt size in words (~tokens) for prefill")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = asyncio.run(calibrate(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
