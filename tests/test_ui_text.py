"""UI strings: every key in both languages with the same fields; stats line as the terminal's."""

from __future__ import annotations

import string
from dataclasses import asdict

import pytest

from edgechat.types import FinishReason, TurnStats
from edgechat.ui_text import LANG_NAMES, TEXT, stats_line, t


def fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@pytest.mark.parametrize("key", sorted(TEXT))
def test_every_string_is_in_both_languages_with_the_same_fields(key: str) -> None:
    assert set(TEXT[key]) == set(LANG_NAMES), key
    assert fields(TEXT[key]["en"]) == fields(TEXT[key]["zh"]), key


def test_chinese_strings_are_chinese() -> None:
    assert t("zh", "new_chat") == "新对话" and t("en", "new_chat") == "New chat"
    assert t("zh", "queued", position=2, eta=7.4) == "排队第 2 位，约 7 秒"
    assert t("en", "queued", position=2, eta=7.4) == "queue position 2, about 7 s"


@pytest.mark.parametrize(
    "stats",
    [
        TurnStats(completion_tokens=48, first_token_s=0.31, decode_tps=65.2, queue_wait_s=0.0),
        TurnStats(completion_tokens=1, first_token_s=0.5, decode_tps=None, queue_wait_s=2.25),
        TurnStats(completion_tokens=7, finish_reason=FinishReason.LENGTH),
        TurnStats(),
    ],
)
def test_english_stats_line_is_the_client_summary(stats: TurnStats) -> None:
    assert stats_line(asdict(stats), "en") == stats.summary()


def test_chinese_stats_line() -> None:
    stats = asdict(TurnStats(completion_tokens=48, first_token_s=0.31, decode_tps=65.2, queue_wait_s=1.0))
    assert stats_line(stats, "zh") == "首字 0.31 秒 · 65.2 tok/s · 48 个 token · 排队 1.0 秒"
