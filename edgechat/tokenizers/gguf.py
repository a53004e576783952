"""The tokenizer a GGUF carries, used through llama.cpp's vocab (thread-safe, read-only)."""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp as lc


class GgufTokenizer:
    """Tokenizer protocol over `llama_tokenize`/`llama_token_to_piece` of a loaded model."""

    def __init__(self, model: Any) -> None:
        self._model = model  # keeps the model alive as long as the tokenizer is used
        self._vocab = lc.llama_model_get_vocab(model)
        self.vocab_size = lc.llama_vocab_n_tokens(self._vocab)
        bos = lc.llama_vocab_bos(self._vocab)
        self.bos_id = bos if bos >= 0 else None
        self.eos_id = lc.llama_vocab_eos(self._vocab)
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self._vocab))
        self.stop_ids = frozenset(t for t in range(self.vocab_size) if lc.llama_vocab_is_eog(self._vocab, t))
        self._pieces: dict[tuple[int, bool], bytes] = {}

    def encode(self, text: str, special: bool = False) -> list[int]:
        if not text:
            return []
        data = text.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace").encode("utf-8")
        capacity = len(data) + 8
        buf = (lc.llama_token * capacity)()
        n = lc.llama_tokenize(self._vocab, data, len(data), buf, capacity, False, special)
        if n < 0:
            capacity = -n
            buf = (lc.llama_token * capacity)()
            n = lc.llama_tokenize(self._vocab, data, len(data), buf, capacity, False, special)
        return list(buf[:n])

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        key = (token, special)
        piece = self._pieces.get(key)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            piece = self._pieces[key] = buf.raw[:n]
        return piece
