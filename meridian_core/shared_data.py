"""Where the public datasets live: `../shared/data` beside the checkout (see its README).

Defaults of the simulators and benchmarks; every command that reads them also takes a path."""

from pathlib import Path

SHARED_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
AZURE_CODE_TRACE = SHARED_DATA_DIR / "traces" / "azure_llm_2023_code.csv"
MOONCAKE_TRACE = SHARED_DATA_DIR / "traces" / "mooncake_conversation.jsonl"
SPOT_TRACES_DIR = SHARED_DATA_DIR / "spot"
