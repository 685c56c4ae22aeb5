"""Measure a replica profile on a running vLLM OpenAI server: prefill tokens/s and decode
step time against batch size, fitted to the `autoscaler.perf.ReplicaProfile` model
(step = base + per_seq · batch).

    .venv/bin/python benchmarks/calibrate_cpu.py --url http://127.0.0.1:8000 --model smollm2-135m-instruct

- Prefill: one request at a time, prompts of `--prompt-tokens` tokens (random words;
  the server's `usage.prompt_tokens` gives the true count), `max_tokens` 1, streamed;
  prefill tok/s = prompt tokens / time to first token, median of `--repeats`.
- Decode: for each batch size b, b concurrent streams with a short prompt and
  `--decode-tokens` output tokens (`ignore_eos`), started together; the step time is the
  median gap between chunks once all b streams have their first token.

Prints the measurements and the fitted profile fields as JSON (`--out FILE` also writes it).
It only talks to the URL it is given, with a bounded number of requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path

import aiohttp

WORDS = ("alpha", "river", "stone", "cloud", "seven", "maple", "orbit", "quartz", "delta", "ember")


def prompt_of(words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def stream(
    session: aiohttp.ClientSession, url: str, model: str, prompt: str, max_tokens: int
) -> tuple[list[float], dict]:
    """Arrival times of the streamed chunks that carry text, and the server's token usage."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    times: list[float] = []
    usage: dict = {}
    async with session.post(f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if any(choice.get("text") for choice in chunk.get("choices", [])):
                times.append(time.perf_counter())
    return times, usage


async def measure_prefill(session: aiohttp.ClientSession, url: str, model: str, words: int, repeats: int) -> dict:
    rates = []
    for i in range(repeats):
        begin = time.perf_counter()
        times, usage = await stream(session, url, model, prompt_of(words, seed=i), 1)
        tokens = int(usage.get("prompt_tokens", 0))
        if times and tokens:
            rates.append(tokens / (times[0] - begin))
    return {"prefill_tokens_per_s": statistics.median(rates), "samples": rates}


async def measure_step(session: aiohttp.ClientSession, url: str, model: str, batch: int, tokens: int) -> float:
    runs = await asyncio.gather(
        *(stream(session, url, model, prompt_of(16, seed=1000 + i), tokens) for i in range(batch))
    )
    all_started = max(times[0] for times, _ in runs if times)
    gaps = [b - a for times, _ in runs for a, b in zip(times, times[1:], strict=False) if a >= all_started]
    return statistics.median(gaps)


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    return mean_y - slope * mean_x, slope


async def calibrate(args: argparse.Namespace) -> dict:
    timeout = aiohttp.ClientTimeout(total=args.timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await stream(session, args.url, args.model, prompt_of(8, seed=0), 2)  # warm-up
        prefill = await measure_prefill(session, args.url, args.model, args.prompt_tokens, args.repeats)
        steps = {}
        for batch in args.batches:
            steps[batch] = await measure_step(session, args.url, args.model, batch, args.decode_tokens)
            print(f"batch {batch}: step {steps[batch] * 1000:.1f} ms", file=sys.stderr)
    base, per_seq = fit_line([float(b) for b in steps], list(steps.values()))
    return {
        "url": args.url,
        "model": args.model,
        "prefill": prefill,
        "decode_step_s_by_batch": steps,
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
