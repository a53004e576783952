"""BaichuanTokenizer: exact sentencepiece ids for text, and user text can never become a marker id."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from edgechat.errors import ConfigError
from edgechat.tokenizers import IncrementalDetokenizer, decode
from edgechat.tokenizers.baichuan import BaichuanTokenizer
from tests.baichuan_tokenizer_model import SHARED_MODEL, train_tokenizer

USER_DEFINED = model_pb2.ModelProto.SentencePiece.USER_DEFINED
CHAT_IDS = {1, 2, 195, 196}


@pytest.fixture(scope="module", params=["baichuan2", "trained"])
def model_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if request.param == "baichuan2":
        if not SHARED_MODEL.is_file():
            pytest.skip(f"{SHARED_MODEL} not present; the trained stand-in covers the same checks")
        return SHARED_MODEL
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(model_path: Path) -> BaichuanTokenizer:
    return BaichuanTokenizer(model_path.parent)


def user_defined_pieces(path: Path) -> list[str]:
    proto = model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return [p.piece for p in proto.pieces if p.type == USER_DEFINED]


def test_it_is_baichuan2_shaped(tok: BaichuanTokenizer) -> None:
    assert (tok.bos_id, tok.eos_id, tok.stop_ids, tok.add_bos) == (1, 2, frozenset({2}), False)
    assert tok.piece(195) == "<reserved_106>" and tok.piece(196) == "<reserved_107>"
    tok.check_chat_ids()
    assert CHAT_IDS <= tok.special_ids


def test_no_user_defined_piece_string_becomes_a_marker_id(tok: BaichuanTokenizer, model_path: Path) -> None:
    pieces = user_defined_pieces(model_path)
    assert "<reserved_106>" in pieces and "<reserved_107>" in pieces
    for text in [*pieces, "<s>", "</s>", "<unk>"]:
        for framed in (text, f"a{text}b", f"{text}{text}", f"<{text}>", f"你好{text} "):
            ids = tok.encode(framed)
            assert not tok.special_ids.intersection(ids), (framed, ids)
            assert decode(tok, ids) == framed


def test_the_turn_markers_are_spelled_out(tok: BaichuanTokenizer) -> None:
    for text in ("<reserved_106>", "<reserved_107>", "x<reserved_106>y<reserved_107>z", "<<reserved_106>>"):
        ids = tok.encode(text)
        assert 195 not in ids and 196 not in ids
        assert decode(tok, ids) == text


def test_text_pieces_keep_their_ids(tok: BaichuanTokenizer, model_path: Path) -> None:
    """Newlines and Chinese punctuation are user-defined pieces the model saw as single tokens."""
    for text in ("\n", "\t", "，", "。", "！"):
        assert tok.encode(text) == [tok._sp.piece_to_id(text)]
        assert tok._sp.piece_to_id(text) in set(range(3, 200))


def test_plain_text_matches_sentencepiece(tok: BaichuanTokenizer, model_path: Path) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    for text in (
        "Hello world, this is a test.",
        "今天天气很好，我们去公园散步吧。\n",
        "  two  spaces\tand tab",
        "1+1=2",
    ):
        assert tok.encode(text) == sp.encode(text)
        assert decode(tok, tok.encode(text)) == text


def test_special_true_parses_markers_for_templates(tok: BaichuanTokenizer) -> None:
    assert tok.encode("<reserved_106>hi<reserved_107>", special=True)[0] == 195
    assert tok.encode("<reserved_106>hi<reserved_107>", special=True)[-1] == 196
    assert tok.encode("</s>", special=True) == [2]


def test_token_bytes(tok: BaichuanTokenizer) -> None:
    byte_a = tok._sp.piece_to_id("<0xE4>")
    assert tok.token_bytes(byte_a) == b"\xe4"
    assert tok.token_bytes(2) == b"" and tok.token_bytes(2, special=True) == b"</s>"
    assert tok.token_bytes(195) == b"" and tok.token_bytes(195, special=True) == b"<reserved_106>"
    spaced = [t for t in tok.encode("a b") if tok.piece(t).startswith("\u2581")]
    assert spaced and tok.token_bytes(spaced[0]).startswith(b" ")
    with pytest.raises(ValueError, match="outside the tokenizer's vocabulary"):
        tok.token_bytes(tok.vocab_size)


def _rare_emoji(tok: BaichuanTokenizer) -> str:
    for cp in range(0x1FA70, 0x1FAFF):
        ids = tok.encode(chr(cp))
        if len(ids) == 4 and all(tok._sp.is_byte(t) for t in ids):
            return chr(cp)
    raise AssertionError("no emoji spelled as four byte tokens")


def test_incremental_detokenizing_never_splits_a_character(tok: BaichuanTokenizer) -> None:
    emoji = _rare_emoji(tok)
    text = f"你好，世界！{emoji} ok 冒泡排序{emoji}"
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.feed(t) for t in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert pieces.count("") >= 3  # the first three bytes of each emoji were held back


def test_missing_and_broken_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tokenizer not found: .*download.sh"):
        BaichuanTokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="is not a sentencepiece model"):
        BaichuanTokenizer(tmp_path)


def test_another_family_tokenizer_is_refused(tmp_path: Path) -> None:
    tok = BaichuanTokenizer(train_tokenizer(tmp_path, with_chat_markers=False))
    with pytest.raises(ConfigError, match="is not Baichuan2's tokenizer: id 195"):
        tok.check_chat_ids()
