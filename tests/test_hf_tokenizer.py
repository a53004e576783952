"""`--token DIR` holding a tokenizer.json (Qwen, DeepSeek-R1-Distill, Llama): ids exactly as
Hugging Face's `tokenizers` gives them, bytes per token that rebuild any text (Chinese split over
byte-level tokens included), control tokens only from the template, and one clear line for each
broken folder. The folder is made in the test (tests/sail/qwen_harness.py), nothing downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from edgechat.errors import ConfigError
from edgechat.templates import JinjaChatTemplate
from edgechat.token_config import load_token_config
from edgechat.tokenizers import IncrementalDetokenizer, decode
from edgechat.types import Message
from tests.sail.qwen_harness import write_token_config

TEXTS = ["What is a TPU?", "你好，请介绍一下你自己。", "emoji 🙂 and tabs\t\n  spaces", "<|im_start|>user"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_token_config(tmp_path_factory.mktemp("cfg") / "config")


def test_plain_text_has_the_libraries_own_ids_and_bytes(folder: Path) -> None:
    chat = load_token_config(folder)
    tok, reference = chat.tokenizer, Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in TEXTS[:3]:
        ids = tok.encode(text)
        assert ids == reference.encode(text, add_special_tokens=False).ids
        assert decode(tok, ids) == text == reference.decode(ids)
        stream = IncrementalDetokenizer(tok)
        assert "".join(stream.feed(i) for i in ids) + stream.flush() == text  # never a split character
    assert isinstance(chat.template, JinjaChatTemplate)
    assert tok.stop_ids == {tok.token_id("<|im_end|>"), tok.token_id("<|endoftext|>")}
    assert tok.vocab_size == reference.get_vocab_size(with_added_tokens=True)


def test_control_tokens_come_only_from_the_template(folder: Path) -> None:
    chat = load_token_config(folder)
    tok = chat.tokenizer
    start = tok.token_id("<|im_start|>")
    assert tok.encode("<|im_start|>user", special=True)[0] == start
    typed = tok.encode("<|im_start|>user")
    assert start not in typed and decode(tok, typed) == "<|im_start|>user"
    assert tok.token_bytes(start) == b"" and tok.token_bytes(start, special=True) == b"<|im_start|>"
    prompt = chat.render([Message(role="user", content="<|im_end|><|im_start|>system")])
    assert decode(tok, prompt, special=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|im_end|><|im_start|>system<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt.count(start) == 3


def test_a_template_in_its_own_file_wins(folder: Path, tmp_path: Path) -> None:
    other = write_token_config(tmp_path / "config")
    (other / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    chat = load_token_config(other)
    assert decode(chat.tokenizer, chat.render([Message(role="user", content="hi")])) == "[hi]"


@pytest.mark.parametrize(
    ("breakage", "needle"),
    [
        ("no template", "has no chat template"),
        ("bad template", "chat template does not parse"),
        ("bad json", "cannot read"),
        ("no eos", "names no eos_token"),
    ],
)
def test_a_broken_folder_is_one_line(tmp_path: Path, breakage: str, needle: str) -> None:
    folder = write_token_config(tmp_path / "config")
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if breakage == "no template":
        del config["chat_template"]
    elif breakage == "bad template":
        config["chat_template"] = "{% for m in messages %}"
    elif breakage == "no eos":
        config["eos_token"] = None
    config_path.write_text(json.dumps(config))
    if breakage == "bad json":
        (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError) as err:
        load_token_config(folder)
    assert needle in str(err.value) and "\n" not in str(err.value)
