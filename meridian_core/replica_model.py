"""How fast one replica serves: the one performance model, shared by the router (its TTFT
estimate), the autoscaler (its SLO capacity) and the simulators (request service). Each
region of a spec names its profile (`regions[].profile`, one of `PROFILES`).

A replica runs vLLM-style continuous batching. Each engine step decodes one token for
every running sequence and prefills up to `max_batched_tokens` prompt tokens (chunked
prefill, decodes scheduled first). So

    decode step (s)  = decode_base_s + decode_per_seq_s * batch
    prefill (s)      = prompt_tokens / prefill_tokens_per_s   (+ the decode share of the steps it rides in)

The batch is bounded by `max_num_seqs` and by the KV cache (`kv_capacity_tokens`: a
running sequence holds prompt + output tokens). A new replica serves nothing for
`cold_start_s` but is paid for.

Profiles
--------
`H100_LLAMA31_8B` — Llama-3.1-8B-Instruct, BF16, one H100-80GB SXM, vLLM defaults:

- KV capacity: Llama-3.1-8B has 32 layers, 8 KV heads of dim 128 (its `config.json`),
  so a token's K and V take 2·32·8·128·2 B = 128 KiB. With `gpu_memory_utilization`
  0.9 of 80 GB minus 16 GB of weights and ~4 GB activations/graphs, ~52 GB is KV cache:
  ~400k tokens (vLLM logs ~25k 16-token blocks for this setup).
- Decode: a step at batch 1 reads the 16 GB of weights at ~3.35 TB/s (H100 SXM
  datasheet) → ~5 ms, ~6.5 ms as measured by vLLM-on-H100 single-stream ITL in Lambda's
  vLLM benchmark (github.com/LambdaLabsML/vllm-benchmark, benchmark_v0.md) and the vLLM
  v0.6.0 blog (blog.vllm.ai, 2024-09-05, "2.7x throughput, 5x faster TPOT" on Llama 8B,
  1×H100). At high concurrency vLLM reaches ~12.5k output tok/s on Llama-3.1-8B, 1×H100
  (third-party collection, morphllm.com/vllm-benchmarks, 2026), i.e. ~20.5 ms for a
  256-sequence step: (20.5 − 6.5) / 255 ≈ 0.055 ms per extra sequence.
- Prefill: 2·8.03e9 FLOP a token (+ attention) against 989 dense BF16 TFLOP/s at the
  ~35–45% MFU vLLM reaches on long prefills gives ~20k tok/s; we use 20,000.
- `max_num_seqs` 256, `max_num_batched_tokens` 8192: vLLM's engine-argument defaults
  for the OpenAI server on ≥70 GiB GPUs (vllm/engine/arg_utils.py).
- Cold start 90 s (Meridian's spec default; container start + weight load from local
  disk + CUDA-graph capture on a warm node); price $6.88/GPU-hour (AWS p5.48xlarge,
  8×H100, $55.04/h on-demand after the June 2025 cut). These two are assumptions, not
  measurements.

`L4_LLAMA31_8B` — Llama-3.1-8B-Instruct, BF16, one L4 (24 GB GDDR6), vLLM defaults.
Derived from the same model facts and the L4 data sheet (300 GB/s, 121 dense BF16
TFLOP/s), not measured:

- KV capacity: 0.9 · 24 GB minus 16 GB of weights and ~1.5 GB of activations leaves
  ~4 GB, at 128 KiB a token ~32k tokens.
- Decode: a step at batch 1 reads the 16 GB of weights at 300 GB/s → 53 ms; we take
  60 ms. Each running sequence adds its KV reads, ~1k tokens · 128 KiB at 300 GB/s
  ≈ 0.44 ms.
- Prefill: 2·8.03e9 FLOP a token against 121 TFLOP/s at ~40% MFU → ~3,000 tok/s.
- `max_num_seqs` 128, `max_num_batched_tokens` 2048: vLLM's OpenAI-server defaults
  below 70 GiB of GPU memory (vllm/engine/arg_utils.py).
- Cold start 90 s (as for H100, an assumption); price $0.8048/GPU-hour, AWS g6.xlarge
  (1×L4) on demand in us-east-1, from the packaged catalog extract.

`CPU_SMOLLM2_135M` — SmolLM2-135M-Instruct under vLLM CPU on this project's 2-core
machines (ARCHITECTURE.md facts): one stream runs at ~20 tok/s → a 50 ms step at batch
1. The bare-vLLM target of `python benchmarks/e2e_vs_vllm.py` on 2026-11-22 (`vllm
bench serve`, 256-token prompts, 64 output tokens, concurrency 16; its output is kept
as benchmarks/results/raw/cpu_profile_source.json) gave 178.8 output tok/s, TTFT p50
1645 ms, TPOT p50 64.3 ms, in waves of 16 requests of 5.7 s each. A wave's 16·256 = 4096 prompt tokens
prefilled in ≈ the TTFT p50 → ~2,500 prompt tok/s; 64 steps at batch 16 took the rest,
so step(16) ≈ 64 ms and step(b) ≈ 49 ms + 0.93 ms·b. KV: vLLM CPU's 4 GiB default KV
space over 30 layers · 3 KV heads · 64 dims · 2 (K,V) · 2 B = 22.5 KiB a token → ~186k
tokens. First deployment of a replica took ~80 s. `benchmarks/calibrate_cpu.py`
re-measures prefill and step(b) on a running server.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ReplicaProfile(BaseModel):
    """One replica of one model on one accelerator type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    accelerator: str = Field(min_length=1)
    # Accelerators a replica holds; GPU-hours = replica-hours × this.
    gpus_per_replica: int = Field(default=1, ge=1)
    usd_per_gpu_hour: float = Field(ge=0)
    prefill_tokens_per_s: float = Field(gt=0)
    decode_base_s: float = Field(gt=0)
    decode_per_seq_s: float = Field(ge=0)
    kv_capacity_tokens: int = Field(gt=0)
    max_num_seqs: int = Field(ge=1)
    max_batched_tokens: int = Field(ge=1)
    cold_start_s: float = Field(gt=0)

    def decode_step_s(self, batch: float) -> float:
        return self.decode_base_s + self.decode_per_seq_s * max(batch, 1.0)

    def prefill_s(self, prompt_tokens: float, decoding: float) -> float:
        """Time to prefill a prompt while `decoding` sequences share every step it rides in."""
        steps = max(prompt_tokens / self.max_batched_tokens, 1.0)
        decode_share = self.decode_per_seq_s * decoding if decoding > 0 else 0.0
        return prompt_tokens / self.prefill_tokens_per_s + steps * (self.decode_base_s + decode_share)

    def itl_s(self, batch: float, prefill_share: float) -> float:
        """Inter-token latency at `batch` running sequences when `prefill_share` of the
        engine's time goes to prefill; a step never carries more than one prefill chunk."""
        step = self.decode_step_s(batch)
        stretched = step / max(1.0 - prefill_share, 1e-3)
        return min(stretched, step + self.max_batched_tokens / self.prefill_tokens_per_s)


H100_LLAMA31_8B = ReplicaProfile(
    name="llama-3.1-8b-h100",
    accelerator="H100-80GB",
    gpus_per_replica=1,
    usd_per_gpu_hour=6.88,
    prefill_tokens_per_s=20_000,
    decode_base_s=0.0065,
    decode_per_seq_s=0.000055,
    kv_capacity_tokens=400_000,
    max_num_seqs=256,
    max_batched_tokens=8192,
    cold_start_s=90.0,
)

L4_LLAMA31_8B = ReplicaProfile(
    name="llama-3.1-8b-l4",
    accelerator="L4",
    gpus_per_replica=1,
    usd_per_gpu_hour=0.8048,
    prefill_tokens_per_s=3_000,
    decode_base_s=0.060,
    decode_per_seq_s=0.00044,
    kv_capacity_tokens=32_000,
    max_num_seqs=128,
    max_batched_tokens=2048,
    cold_start_s=90.0,
)

CPU_SMOLLM2_135M = ReplicaProfile(
    name="smollm2-135m-cpu",
    accelerator="cpu-2core",
    gpus_per_replica=1,
    # A 2-vCPU on-demand VM (AWS c7i.large, us-east-1: $0.0893/h).
    usd_per_gpu_hour=0.0893,
    prefill_tokens_per_s=2_500,
    decode_base_s=0.049,
    decode_per_seq_s=0.00093,
    kv_capacity_tokens=186_000,
    max_num_seqs=256,
    max_batched_tokens=2048,
    cold_start_s=80.0,
)

PROFILES: dict[str, ReplicaProfile] = {p.name: p for p in (H100_LLAMA31_8B, L4_LLAMA31_8B, CPU_SMOLLM2_135M)}
