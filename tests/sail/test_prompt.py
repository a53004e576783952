"""Baichuan2-Chat's prompt format with the real tokenizer (../shared/baichuan2_tokenizer; CI has
it): the exact ids of a two-turn chat, as Baichuan2's `build_chat_input` builds them."""

from __future__ import annotations

import pytest

from edgechat.templates import Baichuan2ChatTemplate
from edgechat.tokenizers.baichuan import BaichuanTokenizer
from edgechat.types import Message
from tests.baichuan_tokenizer_model import SHARED_MODEL

pytestmark = pytest.mark.skipif(not SHARED_MODEL.is_file(), reason="Baichuan2's tokenizer.model is not in ../shared")

TWO_TURNS = [
    Message(role="system", content="你是百川助手。"),
    Message(role="user", content="你好"),
    Message(role="assistant", content="你好！有什么可以帮你？"),
    Message(role="user", content="用一句话介绍TPU。"),
]


@pytest.fixture(scope="module")
def template() -> Baichuan2ChatTemplate:
    return Baichuan2ChatTemplate(BaichuanTokenizer(SHARED_MODEL))


def test_a_two_turn_chat_has_baichuan2s_own_ids(template: Baichuan2ChatTemplate) -> None:
    # system text unmarked, 195 + question, 196 + answer with no eos after it, 195 + question, 196
    assert template.render(TWO_TURNS) == [
        *[8225, 70335, 18183, 66],  # 你是百川助手。
        195,
        16829,  # 你好
        196,
        *[16829, 67, 5817, 1583, 11013, 68],  # 你好！有什么可以帮你？
        195,
        *[92413, 11793, 3150, 92341, 14444, 66],  # 用一句话介绍TPU。
        196,
    ]


def test_where_the_seed_differs(template: Baichuan2ChatTemplate) -> None:
    """sophon-demo's baichuan2.py encodes "<reserved_106>" + text + "<reserved_107>" and drops the
    first id as if it were a bos; Baichuan2's tokenizer adds none, so the seed loses the 195 of
    each user turn and the first token of each earlier answer. Ours keeps both."""
    tok = BaichuanTokenizer(SHARED_MODEL)
    seed_user_turn = tok.encode("<reserved_106>你好<reserved_107>", special=True)[1:]
    seed_answer = tok.encode("你好！有什么可以帮你？", special=True)[1:]
    ours = template.render(TWO_TURNS[1:3])
    assert seed_user_turn == [16829, 196] and seed_answer == [67, 5817, 1583, 11013, 68]
    assert ours == [195, *seed_user_turn, 16829, *seed_answer]


def test_a_trailing_answer_is_continued_not_closed(template: Baichuan2ChatTemplate) -> None:
    assert template.render(TWO_TURNS[1:3])[-1] == 68  # no 196 after an assistant message: it goes on
    assert template.render(TWO_TURNS[:2])[-1] == 196
