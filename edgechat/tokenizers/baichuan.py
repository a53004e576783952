"""Baichuan2's sentencepiece tokenizer, read with the `sentencepiece` library only.

Baichuan2 ships its tokenizer as `tokenization_baichuan.py` for `trust_remote_code`; serving needs
none of that code: the ids come from `tokenizer.model` (BPE, byte fallback, no dummy prefix).

The hazard is Baichuan2's turn markers: `<reserved_106>` (195) and `<reserved_107>` (196) are
USER_DEFINED pieces, and sentencepiece matches user-defined pieces inside ordinary text, so a
person typing `<reserved_106>` would open a fake user turn. Here every *marker piece* is kept out
of user text: the text is split around marker strings and each marker is spelled out from its
characters (down to byte-fallback pieces), never as its own id.

Marker pieces are, whatever their piece type: control and unknown pieces, the chat ids (bos, eos,
195, 196), and every piece shaped like a tag, `<...>` (`<reserved_N>`, `<SEP>`, `<CLS>`, `<img>`,
`<h2>`, ...). Baichuan2's other user-defined pieces are ordinary text the model was trained to see
as one token (`\\n`, `\\t`, `，`, `。`, `！`, full-width digits, `...`, `<!--`): they keep their ids,
so plain text tokenizes exactly as Baichuan2's own tokenizer does.
"""

from __future__ import annotations

import re
from pathlib import Path

import sentencepiece as spm

from edgechat.errors import ConfigError
from edgechat.tokenizers import CachedTokenBytes

SPACE_PIECE = "\u2581"  # sentencepiece's visible space
TAG = re.compile(r"<[^<>\s]+>")
BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
USER_ID = 195  # <reserved_106>
ASSISTANT_ID = 196  # <reserved_107>


class BaichuanTokenizer(CachedTokenBytes):
    """The Tokenizer protocol (edgechat.tokenizers) over Baichuan2's `tokenizer.model`."""

    add_bos = False  # Baichuan2-Chat prompts start with the first turn, no <s>

    def __init__(self, path: str | Path) -> None:
        self.path = _model_file(Path(path))
        self._sp = _load(self.path)
        self.vocab_size = self._sp.get_piece_size()
        bos = self._sp.bos_id()
        self.bos_id = bos if bos >= 0 else None
        self.eos_id = self._sp.eos_id()
        self.stop_ids = frozenset({self.eos_id})
        self._byte_ids = self._find_byte_ids()
        self.special_ids = self._find_special_ids()
        self._special_by_text = {self._text(i): i for i in sorted(self.special_ids, reverse=True)}
        self._special_by_text.pop("", None)
        # Longest first, so `<img/>` wins over a shorter marker at the same position.
        names = sorted(self._special_by_text, key=len, reverse=True)
        self._splitter = re.compile("|".join(map(re.escape, names))) if names else None
        self._bytes = {}  # CachedTokenBytes

    # ---- the Tokenizer protocol ----

    def encode(self, text: str, special: bool = False) -> list[int]:
        """Ids of `text`, no BOS. Marker strings become their ids only when `special`; in user
        text (`special=False`) they are spelled out from their characters."""
        text = _clean(text)
        if not text:
            return []
        if self._splitter is None:
            return self._plain(text)
        ids: list[int] = []
        pos = 0
        for match in self._splitter.finditer(text):
            ids += self._plain(text[pos : match.start()])
            marker = match.group()
            ids += [self._special_by_text[marker]] if special else self._spell(marker)
            pos = match.end()
        ids += self._plain(text[pos:])
        return ids

    # ---- helpers ----

    def piece(self, token: int) -> str:
        return self._sp.id_to_piece(token)

    def check_chat_ids(self) -> None:
        """Baichuan2's chat template writes ids 195/196 and stops on eos 2; a tokenizer from another
        model family would silently garble every prompt, so refuse it at load."""
        expected = {USER_ID: "<reserved_106>", ASSISTANT_ID: "<reserved_107>"}
        for token, piece in expected.items():
            found = self.piece(token) if token < self.vocab_size else "(missing)"
            if found != piece:
                raise ConfigError(
                    f"{self.path} is not Baichuan2's tokenizer: id {token} is {found!r}, expected {piece!r}; "
                    "pass --token DIR with Baichuan2's tokenizer.model (scripts/download.sh fetches it)"
                )
        if self.eos_id != 2:
            raise ConfigError(f"{self.path} is not Baichuan2's tokenizer: eos is {self.eos_id}, expected 2")

    def _plain(self, text: str) -> list[int]:
        """Text that holds no marker string: sentencepiece can only produce pieces whose text
        occurs in it, so no marker id. The check below guards against a model that breaks this."""
        if not text:
            return []
        ids = self._sp.encode(text)
        if self.special_ids.intersection(ids):
            return self._bytes_of(text)
        return ids

    def _spell(self, marker: str) -> list[int]:
        """A marker string as ordinary text: its first character, then the rest, each re-checked
        for markers; a single character that is itself a marker goes out as raw bytes."""
        if len(marker) == 1:
            return self._bytes_of(marker)
        return self.encode(marker[0]) + self.encode(marker[1:])

    def _bytes_of(self, text: str) -> list[int]:
        if len(self._byte_ids) < 256:
            raise ValueError(f"{self.path} has no byte-fallback pieces: cannot spell {text!r} safely")
        return [self._byte_ids[b] for b in text.encode("utf-8")]

    def _text(self, token: int) -> str:
        return self._sp.id_to_piece(token).replace(SPACE_PIECE, " ")

    def _piece_bytes(self, token: int, special: bool) -> bytes:
        if not 0 <= token < self.vocab_size:
            raise ValueError(f"token id {token} is outside the tokenizer's vocabulary of {self.vocab_size}")
        if self._sp.is_byte(token):
            match = BYTE_PIECE.fullmatch(self._sp.id_to_piece(token))
            return bytes([int(match.group(1), 16)]) if match else b""
        if token in self.special_ids:
            return self._sp.id_to_piece(token).encode("utf-8") if special else b""
        return self._text(token).encode("utf-8")

    def _find_byte_ids(self) -> dict[int, int]:
        ids = {}
        for b in range(256):
            token = self._sp.piece_to_id(f"<0x{b:02X}>")
            if token != self._sp.unk_id() and self._sp.is_byte(token):
                ids[b] = token
        return ids

    def _find_special_ids(self) -> frozenset[int]:
        sp = self._sp
        found = {t for t in (self.bos_id, self.eos_id, USER_ID, ASSISTANT_ID) if t is not None and t < self.vocab_size}
        found.add(sp.unk_id())
        pieces = sp.id_to_piece(list(range(self.vocab_size)))
        for token, piece in enumerate(pieces):
            if piece.startswith("<") and TAG.fullmatch(piece.replace(SPACE_PIECE, " ")) and not sp.is_byte(token):
                found.add(token)
            elif sp.is_control(token):
                found.add(token)
        return frozenset(found)


def _model_file(path: Path) -> Path:
    """`--token` names a directory holding tokenizer.model (the seed's token_config/) or the file."""
    return path / "tokenizer.model" if path.is_dir() else path


def _load(path: Path) -> spm.SentencePieceProcessor:
    if not path.is_file():
        raise ConfigError(
            f"tokenizer not found: {path} — run scripts/download.sh, "
            "or pass --token DIR holding Baichuan2's tokenizer.model"
        )
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(str(path))
    except (OSError, RuntimeError) as err:
        raise ConfigError(
            f"{path} is not a sentencepiece model ({err}); pass --token DIR with Baichuan2's tokenizer.model"
        ) from None
    return sp


def _clean(text: str) -> str:
    """Lone surrogates (possible from a browser) cannot reach sentencepiece as UTF-8."""
    return text.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace")
