"""Request traces for the autoscaling simulator: loading and fleet-scale superposition.

Formats:
- `azure`: the Azure LLM inference trace 2023 CSV, `TIMESTAMP,ContextTokens,GeneratedTokens`
  (github.com/Azure/AzurePublicDataset, AzureLLMInferenceDataset2023.md).
- `mooncake`: Mooncake JSONL, one object a line with `timestamp` (ms), `input_length`,
  `output_length` (github.com/kvcache-ai/Mooncake, FAST'25 traces).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

FORMATS = ("azure", "mooncake")


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Trace:
    """Requests sorted by arrival; times in seconds from the first arrival."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0


def from_arrays(arrival_s: np.ndarray, prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> Trace:
    arrival = np.asarray(arrival_s, dtype=np.float64)
    order = np.argsort(arrival, kind="stable")
    start = arrival[order[0]] if len(arrival) else 0.0
    return Trace(
        arrival_s=arrival[order] - start,
        prompt_tokens=np.maximum(np.asarray(prompt_tokens, dtype=np.int64)[order], 1),
        output_tokens=np.maximum(np.asarray(output_tokens, dtype=np.int64)[order], 1),
    )


def _azure_time(text: str) -> float:
    # The trace has 7 fractional digits; datetime takes at most 6.
    head, _, frac = text.strip().partition(".")
    return datetime.fromisoformat(f"{head}.{(frac or '0')[:6]:0<6}").timestamp()


def load_azure(path: Path) -> Trace:
    arrivals: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]:
            raise TraceError(f"{path}: expected the header TIMESTAMP,ContextTokens,GeneratedTokens")
        for line, row in enumerate(reader, start=2):
            try:
                arrivals.append(_azure_time(row[0]))
                prompts.append(int(row[1]))
                outputs.append(int(row[2]))
            except (IndexError, ValueError) as error:
                raise TraceError(f"{path}:{line}: {error}") from None
    if not arrivals:
        raise TraceError(f"{path}: no requests")
    return from_arrays(np.array(arrivals), np.array(prompts), np.array(outputs))


def load_mooncake(path: Path) -> Trace:
    arrivals: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    with path.open() as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
                arrivals.append(float(record["timestamp"]) / 1000.0)
                prompts.append(int(record["input_length"]))
                outputs.append(int(record["output_length"]))
            except (KeyError, TypeError, ValueError) as error:
                raise TraceError(f"{path}:{line}: {error!r}") from None
    if not arrivals:
        raise TraceError(f"{path}: no requests")
    return from_arrays(np.array(arrivals), np.array(prompts), np.array(outputs))


def load(path: Path, fmt: str) -> Trace:
    if fmt == "azure":
        return load_azure(path)
    if fmt == "mooncake":
        return load_mooncake(path)
    raise TraceError(f"unknown trace format {fmt!r}; expected one of {', '.join(FORMATS)}")


def superpose(trace: Trace, copies: int) -> Trace:
    """`copies` copies of the trace, copy k shifted by k/copies of its duration and wrapped
    around, so the result spans the same time at `copies` times the rate while each copy
    keeps the trace's own burstiness."""
    if copies < 1:
        raise ValueError("copies must be at least 1")
    if copies == 1:
        return trace
    period = trace.duration_s + (trace.duration_s / max(len(trace) - 1, 1))
    shifts = np.arange(copies, dtype=np.float64) * (period / copies)
    arrival = (trace.arrival_s[None, :] + shifts[:, None]) % period
    return from_arrays(
        arrival.ravel(),
        np.tile(trace.prompt_tokens, copies),
        np.tile(trace.output_tokens, copies),
    )
