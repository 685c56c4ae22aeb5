"""Send one chat request through the router with the official openai client and print
the answer: the last step of `make run`."""

from __future__ import annotations

import sys

import openai

from meridian_core.spec import load_spec

QUESTION = "What is the capital of France?"
SYSTEM = "You are a helpful assistant. Answer in one short sentence."


def main(spec_path: str) -> int:
    spec = load_spec(spec_path)
    client = openai.OpenAI(base_url=f"http://{spec.router.host}:{spec.router.port}/v1", api_key="unused")
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    raw = client.chat.completions.with_raw_response.create(
        model=spec.models[0].id, messages=messages, temperature=0, max_tokens=64
    )
    answer = raw.parse()
    print(f"Q: {QUESTION}")
    print(f"A ({raw.headers.get('x-meridian-region')}): {answer.choices[0].message.content}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "configs/local.yaml"))
