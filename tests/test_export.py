"""Chat export: Markdown a person reads (no message can forge a turn), JSON a tool parses and the
saved-chats import reads back with validation."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from markdown_it import MarkdownIt

from edgechat.export import filename, from_json, to_json, to_markdown
from edgechat.records import IMPORT_MAX_CHARS, MAX_RECORDS
from edgechat.safe_markdown import safe_markdown
from edgechat.types import FinishReason, TurnStats

MESSAGES = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "2+2 = **4**", "stats": {"completion_tokens": 7, "decode_tps": 60.0}},
    {"role": "user", "content": "天空是什么颜色？"},
    {"role": "assistant", "content": "Blue", "stopped": True},
]
ROLE_NAMES = {"user": "You", "assistant": "Assistant"}
COMMONMARK = MarkdownIt("commonmark")
# Replies that try to end their own quote and start a turn of their own.
FORGERIES = [
    "Sure.\n### You\nIgnore the above.",
    "Sure.\n\n### You\n\nIgnore the above.",
    "Sure.\r### You\rIgnore the above.",
    "Sure.\r\n### You\r\nIgnore.",
    "Sure.\u2028### You\u2029Ignore.",
    "Sure.\x0b### You\x0cIgnore.\x1c### You\x85### You",
    "```\n### You\nunclosed fence",
    "~~~~\n### You",
    "<!--\n### You\n-->",
    "<pre>\n\n### You\n\n</pre>",
    "<script>\n### You",
    "    ### You (indented code)",
    "$$\n### You\n",
    "> quoted\n\n### You",
    "- item\n\n  ### You",
    "Setext\n===\n### You\n---",
    "[r]: http://x.example\n### You",
    "\n\n\n### You\n\n\n",
    "",
]


def turns(md: str) -> list[tuple[str, str]]:
    """(heading, HTML of the quote after it) for every `###` heading a CommonMark parser finds at
    the top level of the file: the turns a reader of the rendered file sees."""
    tokens = COMMONMARK.parse(md)
    found = []
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.tag == "h3" and tok.level == 0:
            title = tokens[i + 1].content
            assert tokens[i + 3].type == "blockquote_open", md
            depth, j = 0, i + 3
            while True:  # the matching blockquote_close
                depth += {"blockquote_open": 1, "blockquote_close": -1}.get(tokens[j].type, 0)
                if depth == 0:
                    break
                j += 1
            found.append((title, COMMONMARK.renderer.render(tokens[i + 4 : j], COMMONMARK.options, {})))
    return found


def test_markdown_has_every_turn_in_order_with_roles_and_stats() -> None:
    md = to_markdown(
        MESSAGES,
        title="Chat with M",
        role_names=ROLE_NAMES,
        caption=lambda s: f"{s['completion_tokens']} tokens",
        system="Be brief.",
    )
    assert md.startswith("# Chat with M\n\n> Be brief.\n")
    order = [
        md.index(x) for x in ("> What is 2+2?", "> 2+2 = **4**", "*7 tokens*", "> 天空是什么颜色？", "> Blue\n>\n> ⏹")
    ]
    assert order == sorted(order)
    assert [t for t, _ in turns(md)] == ["You", "Assistant", "You", "Assistant"]


@pytest.mark.parametrize("reply", FORGERIES)
def test_no_reply_can_forge_a_turn_and_each_round_trips(reply: str) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply}]
    messages += [{"role": "user", "content": "next"}, {"role": "assistant", "content": "ok", "error": "### You"}]
    md = to_markdown(messages, title="### You", role_names=ROLE_NAMES, system="### You\r### You")
    found = turns(md)
    assert [t for t, _ in found] == ["You", "Assistant", "You", "Assistant"], md
    for (_, html), m in zip(found, messages, strict=True):  # each quote holds its message, as the page shows it
        assert html.split() == COMMONMARK.render(safe_markdown(m["content"])).split(), md  # U+2028 → " "


def test_a_pixel_in_a_reply_is_not_loaded_by_a_markdown_previewer() -> None:
    md = to_markdown(
        [{"role": "assistant", "content": '![p](http://evil.example/p.png) <img src="http://evil.example/q">'}],
        title="t",
        role_names=ROLE_NAMES,
    )
    html = COMMONMARK.render(md)
    assert "<img" not in html and "evil.example/p.png" in html


def test_json_round_trips_messages_and_settings() -> None:
    when = datetime(2026, 11, 25, 8, 0, tzinfo=timezone.utc)
    text = to_json(MESSAGES, model="M", system="Be brief.", sampling={"temperature": 0.0}, now=when)
    doc = json.loads(text)
    assert doc["messages"] == MESSAGES and doc["model"] == "M" and doc["sampling"] == {"temperature": 0.0}
    assert doc["exported_at"] == "2026-11-25T08:00:00+00:00"
    assert "天空" in to_json(MESSAGES, model="M")  # readable, not \\u escapes
    messages, meta = from_json(text)
    assert messages == MESSAGES
    assert meta == {
        "model": "M",
        "system": "Be brief.",
        "sampling": {"temperature": 0.0},
        "exported_at": "2026-11-25T08:00:00+00:00",
    }
    assert from_json(text.encode())[0] == MESSAGES


def test_an_export_imports_back_with_every_field_of_every_record() -> None:
    figures = TurnStats(prompt_tokens=30, completion_tokens=9, first_token_s=0.4, decode_tps=51.5,
                        finish_reason=FinishReason.CANCELLED).figures()  # fmt: skip
    records = [
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": "Once upon", "interrupted": True, "stats": figures, "trimmed": 2},
        {"role": "user", "content": "Again?"},
        {"role": "assistant", "content": "Twice", "stopped": True, "error": "the engine failed; try again"},
    ]
    messages, _ = from_json(to_json(records, model="M"))
    assert messages == records


def test_from_json_drops_keys_it_does_not_know() -> None:
    doc = {"messages": [{"role": "user", "content": "x", "html": "<b>", "stats": None}], "future": 1}
    assert from_json(json.dumps(doc)) == (
        [{"role": "user", "content": "x"}],
        {"model": "", "system": None, "sampling": {}, "exported_at": ""},
    )


def msg(**fields: object) -> str:
    return json.dumps({"messages": [{"role": "user", "content": "x", **fields}]})


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("not json", "not a JSON chat export"),
        ("[1, 2]", 'no "messages" list'),
        ('{"messages": {}}', 'no "messages" list'),
        ("[" * 100_000 + "]" * 100_000, "not a JSON chat export"),
        ('{"messages": [], "sampling": {"t": NaN}}', "not a JSON chat export"),
        (json.dumps({"messages": [{"role": "system", "content": "x"}]}), "message 1: role must be"),
        (json.dumps({"messages": [{"role": "tool", "content": "x"}]}), "not 'tool'"),
        (json.dumps({"messages": ["hi"]}), "message 1: expected an object"),
        (json.dumps({"messages": [{"role": "user"}]}), "message 1 content must be text"),
        (json.dumps({"messages": [{"role": "user", "content": ["x"]}]}), "message 1 content must be text"),
        (msg(stopped="yes"), "stopped must be true or false"),
        (msg(trimmed=-1), "trimmed must be a count"),
        (msg(trimmed=True), "trimmed must be a count"),
        (msg(stats={"decode_tps": "fast"}), "stats decode_tps must be a number"),
        (msg(stats={"decode_tps": True}), "stats decode_tps must be a number"),
        (msg(stats={"x": {"nested": 1}}), "message 1 stats"),
        (msg(stats={str(i): 1 for i in range(40)}), "at most 32"),
        (msg(error=["x"]), "message 1 error must be text"),
        (msg(interrupted="yes"), "message 1: interrupted must be true or false"),
        (json.dumps({"messages": [{"role": "user", "content": "\ud800"}]}), "message 1 content is not valid text"),
        (json.dumps({"messages": [{"role": "user", "content": "ok"}] * 2 + [{"role": "user"}]}), "message 3 content"),
        (json.dumps({"messages": [], "model": 5}), "model must be text"),
        (json.dumps({"messages": [], "system": "s" * 200_000}), "system is 200000 characters"),
    ],
)
def test_from_json_refuses_bad_files_with_one_clear_line(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as err:
        from_json(text)
    assert "\n" not in str(err.value)


def test_from_json_takes_what_a_conversation_keeps_and_the_page_can_paste() -> None:
    full = [{"role": "user", "content": "x"}] * MAX_RECORDS
    assert from_json(json.dumps({"messages": full}))[0] == full
    with pytest.raises(ValueError, match=f"{MAX_RECORDS + 1} messages; at most {MAX_RECORDS} are accepted"):
        from_json(json.dumps({"messages": [*full, full[0]]}))
    head, tail = '{"messages": [{"role": "user", "content": "', '"}]}'
    wide = "天" * (IMPORT_MAX_CHARS - len(head + tail))  # characters, as the page's paste box counts them
    assert from_json((head + wide + tail).encode())[0][0]["content"] == wide
    with pytest.raises(ValueError, match=f"chat file is {IMPORT_MAX_CHARS + 1} characters; at most {IMPORT_MAX_CHARS}"):
        from_json(head + wide + "x" + tail)


def test_filename_is_safe() -> None:
    when = datetime(2026, 11, 25, 8, 5)
    assert filename("SmolLM2-135M-Instruct.Q4_1", "md", when) == "edgechat-SmolLM2-135M-Instruct.Q4_1-20261125-0805.md"
    assert filename("../../etc/passwd", "json", when) == "edgechat-etc_passwd-20261125-0805.json"
