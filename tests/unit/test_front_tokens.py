"""The compiled front counts a prompt's tokens itself for byte-level BPE tokenizers: its
counts are the model's own tokenizer's (`tokenizers`), text for text."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from geo_router.live.front import FrontTokenizer
from meridian_core.model_files import local_model_dir
from meridian_core.spec import PackagedModelSource

TEXTS = [
    "What is the capital of France?",
    "Hello, world! It's a test; we'll see: they've done it, I'm sure, you'd agree.",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nand  double  spaces",
    "numbers 1234567890 and 3.14159 and 1,000,000",
    "def f(x):\n    return x ** 2  # comment\n",
    '{"key": [1, 2, 3], "other": null}',
    "Ünïcödé façade naïve café, Straße, Ελληνικά, русский текст",
    "中文文本，日本語のテキスト、한국어 텍스트",
    "emoji 🎉🚀 and symbols ©®™ — “quotes” «guillemets»",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "'s 't 're 've 'm 'll 'd 'x",
    "URLs like https://example.com/path?q=1&r=2 and emails a.b@c.de",
    "",
    " ",
    "\n",
    "a" * 600,
    "The quick brown fox jumps over the lazy dog. " * 40,
]


@pytest.fixture(scope="module")
def tokenizer_json() -> str:
    directory = local_model_dir(PackagedModelSource())
    if directory is None or not (directory / "tokenizer.json").is_file():
        pytest.skip("the default model's files are not on this machine")
    return str(directory / "tokenizer.json")


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_the_fronts_count_is_the_tokenizers(tokenizer_json, text):
    reference = Tokenizer.from_file(tokenizer_json)
    expected = len(reference.encode(text, add_special_tokens=False).ids)
    assert FrontTokenizer(tokenizer_json).count(text) == expected


def test_a_tokenizer_the_front_cannot_read_is_refused(tmp_path):
    unusual = tmp_path / "tokenizer.json"
    unusual.write_text('{"model": {"type": "Unigram"}, "normalizer": null, "pre_tokenizer": null}')
    with pytest.raises(ValueError, match="byte-level BPE"):
        FrontTokenizer(str(unusual))
