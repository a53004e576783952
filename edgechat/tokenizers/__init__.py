"""Tokenizers that keep user text and control tokens apart.

Every tokenizer here answers `encode(text, special=False)` with the ids of plain text only: a user
typing `<|im_start|>` or `<reserved_106>` gets the ids of those characters, never the control id.
Templates alone ask for `special=True`, for their own markers.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from typing import Protocol


class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int | None
    eos_id: int
    add_bos: bool
    stop_ids: frozenset[int]  # end-of-generation ids (eos, end-of-turn)

    def encode(self, text: str, special: bool = False) -> list[int]:
        """Ids of `text`, no BOS; `special=True` parses control-token strings (templates only)."""
        ...

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        """Raw bytes of one token (a byte-fallback token is a single byte); control tokens are
        empty unless `special`."""
        ...


class CachedTokenBytes:
    """`token_bytes` remembered per (token, special): detokenizing asks for the same few thousand
    pieces over and over. A tokenizer sets `self._bytes = {}` and supplies `_piece_bytes`, the
    uncached answer."""

    _bytes: dict[tuple[int, bool], bytes]

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        key = (token, special)
        piece = self._bytes.get(key)
        if piece is None:
            piece = self._bytes[key] = self._piece_bytes(token, special)
        return piece

    def _piece_bytes(self, token: int, special: bool) -> bytes:
        raise NotImplementedError


def decode(tokenizer: Tokenizer, ids: Iterable[int], special: bool = False) -> str:
    return b"".join(tokenizer.token_bytes(t, special) for t in ids).decode("utf-8", errors="replace")


class IncrementalDetokenizer:
    """Turns a token stream into text pieces that never split a UTF-8 character.

    Byte-fallback tokens carry one byte each, so a Chinese character or an emoji can arrive over
    several tokens; an incremental UTF-8 decoder holds the incomplete tail until it is whole.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self._utf8.decode(self._tokenizer.token_bytes(token))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)
