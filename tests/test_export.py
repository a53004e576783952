"""Chat export: Markdown a person reads, JSON a tool parses."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from edgechat.export import filename, to_json, to_markdown

MESSAGES = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "2+2 = **4**", "stats": {"completion_tokens": 7, "decode_tps": 60.0}},
    {"role": "user", "content": "天空是什么颜色？"},
    {"role": "assistant", "content": "Blue", "stopped": True},
]


def test_markdown_has_every_turn_in_order_with_roles_and_stats() -> None:
    md = to_markdown(
        MESSAGES,
        title="Chat with M",
        role_names={"user": "You", "assistant": "Assistant"},
        caption=lambda s: f"{s['completion_tokens']} tokens",
        system="Be brief.",
    )
    assert md.startswith("# Chat with M\n\n> Be brief.\n")
    order = [md.index(x) for x in ("What is 2+2?", "2+2 = **4**", "*7 tokens*", "天空是什么颜色？", "Blue ⏹")]
    assert order == sorted(order)
    assert md.count("### You") == 2 and md.count("### Assistant") == 2


def test_json_round_trips_messages_and_settings() -> None:
    when = datetime(2026, 11, 25, 8, 0, tzinfo=timezone.utc)
    doc = json.loads(to_json(MESSAGES, model="M", system=None, sampling={"temperature": 0.0}, now=when))
    assert doc["messages"] == MESSAGES and doc["model"] == "M" and doc["sampling"] == {"temperature": 0.0}
    assert doc["exported_at"] == "2026-11-25T08:00:00+00:00"
    assert "天空" in to_json(MESSAGES, model="M")  # readable, not \\u escapes


def test_filename_is_safe() -> None:
    when = datetime(2026, 11, 25, 8, 5)
    assert filename("SmolLM2-135M-Instruct.Q4_1", "md", when) == "edgechat-SmolLM2-135M-Instruct.Q4_1-20261125-0805.md"
    assert filename("../../etc/passwd", "json", when) == "edgechat-etc_passwd-20261125-0805.json"
