"""A model's `tokenizer.json` (Qwen2.5, Qwen3, DeepSeek-R1-Distill, Llama 3 ...), read with Hugging
Face's `tokenizers` library: Rust, no model code executed, no download.

Control tokens stay out of user text: the tokenizer is loaded twice from the same file, once as it
is (templates ask for `special=True`: `<|im_start|>` becomes its id) and once without its added
tokens (user text: `<|im_start|>` typed by a person is tokenized from its characters by the BPE
model, never matched as an added token). Ordinary ids are the same in both.

Per-token bytes (the stream decodes UTF-8 across tokens) come from the model's pieces: ByteLevel
tokenizers spell every byte as one printable character (GPT-2's table, which `tokenizers` applies
inside its decoder but does not expose per token); others use `<0xNN>` byte-fallback pieces and
`▁` for a space.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HfRust

from edgechat.errors import ConfigError
from edgechat.tokenizers import CachedTokenBytes

SPACE_PIECE = "\u2581"


def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte <-> printable character map: printable Latin-1 bytes stand for themselves,
    the other bytes take the characters from U+0100 on, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json names tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


class HfTokenizer(CachedTokenBytes):
    """The Tokenizer protocol (edgechat.tokenizers) over a config folder's `tokenizer.json`."""

    add_bos = False  # chat templates write bos_token themselves where the model wants one

    def __init__(self, directory: Path) -> None:
        path = directory / "tokenizer.json"
        data = _read_json(path)
        try:
            self._full = HfRust.from_str(json.dumps(data))
            self._plain = HfRust.from_str(json.dumps({**data, "added_tokens": []}))
        except Exception as err:  # noqa: BLE001 — the Rust side raises plain Exception
            raise ConfigError(f"{path} is not a tokenizer.json the tokenizers library reads: {err}") from None
        self.config = _read_json(directory / "tokenizer_config.json")
        self.vocab_size = self._full.get_vocab_size(with_added_tokens=True)
        added = data.get("added_tokens") or []
        self._added = {int(t["id"]): (str(t["content"]), bool(t.get("special"))) for t in added}
        self.special_ids = frozenset(i for i, (_, special) in self._added.items() if special)
        decoder = json.dumps(data.get("decoder") or {})
        self._byte_level = _byte_level_table() if '"ByteLevel"' in decoder else None
        self.bos_id = self.token_id(_token_text(self.config.get("bos_token")))
        eos = self.token_id(_token_text(self.config.get("eos_token")))
        if eos is None:
            raise ConfigError(f"{directory / 'tokenizer_config.json'} names no eos_token of {path.name}")
        self.eos_id = eos
        self.stop_ids = frozenset({eos, *self._generation_eos(directory)})
        self._bytes = {}  # CachedTokenBytes

    def token_id(self, text: str | None) -> int | None:
        return None if text is None else self._full.token_to_id(text)

    def _generation_eos(self, directory: Path) -> list[int]:
        """generation_config.json's eos_token_id (one id or a list), where the folder has it."""
        path = directory / "generation_config.json"
        if not path.is_file():
            return []
        value = _read_json(path).get("eos_token_id")
        ids = value if isinstance(value, list) else [value]
        return [int(i) for i in ids if isinstance(i, int) and 0 <= i < self.vocab_size]

    # ---- the Tokenizer protocol ----

    def encode(self, text: str, special: bool = False) -> list[int]:
        if not text:
            return []
        text = text.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace")
        tokenizer = self._full if special else self._plain
        return list(tokenizer.encode(text, add_special_tokens=False).ids)

    def _piece_bytes(self, token: int, special: bool) -> bytes:
        if token in self._added:
            content, is_special = self._added[token]
            return content.encode("utf-8") if special or not is_special else b""
        piece = self._full.id_to_token(token)
        if piece is None:
            return b""
        if self._byte_level is not None:
            return bytes(self._byte_level.get(c, 0x3F) for c in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        return piece.replace(SPACE_PIECE, " ").encode("utf-8")
