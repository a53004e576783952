"""Where tests get a Baichuan2-shaped sentencepiece model: the real one beside the project
(`../shared/baichuan2_tokenizer/tokenizer.model`, never copied into the repo) or, where that is
missing, a small one trained here with the same special ids (unk 0, bos 1, eos 2, USER_DEFINED
`<reserved_106>` = 195 and `<reserved_107>` = 196, BPE with byte fallback, no dummy prefix)."""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

REPO = Path(__file__).resolve().parents[1]
SHARED_MODEL = REPO.parent / "shared" / "baichuan2_tokenizer" / "tokenizer.model"

# 192 user-defined symbols before <reserved_106> put it at id 3 + 192 = 195, as in Baichuan2.
_TEXT_SYMBOLS = ["\n", "\t", "，", "。", "！", "？", "...", "<!--", "-->"]
_MARKERS = ["<SEP>", "<CLS>", "<img>", "</img>", "<h2>", "</h2>"]
_FILLERS = [f"<filler_{i}>" for i in range(192 - 106 - len(_TEXT_SYMBOLS) - len(_MARKERS))]
USER_DEFINED = [*_TEXT_SYMBOLS, *_MARKERS, *_FILLERS, *[f"<reserved_{i}>" for i in range(110)]]

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a small corpus for a test tokenizer.",
    "Edge boxes run language models on a TPU; sessions share one model.",
    "今天天气很好，我们去公园散步吧。",
    "你好！请问有什么可以帮助你的吗？",
    "用C++写一段冒泡排序算法。",
    "def bubble_sort(items):\n\tfor i in range(len(items)):\n\t\tpass",
    "Numbers 0123456789 and symbols <>/=+-*&^%$#@!",
]


def train_tokenizer(directory: Path, with_chat_markers: bool = True) -> Path:
    """Write a small Baichuan2-shaped tokenizer.model into `directory`; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    prefix = directory / "tokenizer"
    symbols = USER_DEFINED if with_chat_markers else [s for s in USER_DEFINED if not s.startswith("<reserved_")]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 20),
        model_prefix=str(prefix),
        model_type="bpe",
        vocab_size=700,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        user_defined_symbols=symbols,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (directory / "tokenizer.vocab").unlink(missing_ok=True)
    return prefix.with_suffix(".model")
