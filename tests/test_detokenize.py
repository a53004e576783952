"""Streaming text never splits a UTF-8 character, whatever the token boundaries."""

from edgechat.runtime import Runtime
from edgechat.tokenizers import IncrementalDetokenizer

TEXT = "你好，世界！Emoji: 😀👍🏽 done"


def test_multibyte_characters_split_across_tokens_come_out_whole(runtime: Runtime) -> None:
    tok = runtime.tokenizer.tokenizer
    ids = tok.encode(TEXT)
    pieces = [tok.token_bytes(t) for t in ids]
    # The model's tokens really do cut characters in the middle (else this test proves nothing).
    assert any(_not_utf8(p) for p in pieces)
    detok = IncrementalDetokenizer(tok)
    out = [detok.feed(t) for t in ids] + [detok.flush()]
    assert "".join(out) == TEXT
    assert all("\ufffd" not in piece for piece in out)


def test_byte_tokens_one_at_a_time() -> None:
    class ByteTokenizer:
        """Byte-fallback tokens as in Baichuan2's sentencepiece model: one byte per token."""

        def token_bytes(self, token: int, special: bool = False) -> bytes:
            return bytes([token])

    detok = IncrementalDetokenizer(ByteTokenizer())  # type: ignore[arg-type]
    out = [detok.feed(b) for b in "中文😀".encode()]
    assert [p for p in out if p] == ["中", "文", "😀"]


def _not_utf8(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
