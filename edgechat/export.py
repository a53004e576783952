"""A chat as a file to keep: Markdown for people, JSON (with settings and stats) for tools, and
the JSON read back for the saved-chats import.

Messages are a chat's records (edgechat.records), written whole to JSON, so an export imports back
as it was. In the Markdown file each message is a blockquote: every line of it starts with ">",
so no message can end its quote and write a heading of its own (a reply containing "\n### You\n"
stays inside the reply). Message text goes through `safe_markdown` first: a file opened in a
Markdown previewer (editors render raw HTML and load images) must not fetch a pixel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from edgechat import records
from edgechat.records import Record
from edgechat.safe_markdown import plain_text, safe_markdown

STOPPED_MARK = "⏹"


# Line breaks for some editors, not for CommonMark: spaces, so a raw reader sees no fake line start.
_SEPARATORS = re.compile("[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def quote(text: str) -> list[str]:
    """`text` as blockquote lines: every CommonMark line gets its ">", so nothing inside can end
    the quote and start a turn of its own."""
    lines = re.split(r"\r\n|\r|\n", _SEPARATORS.sub(" ", text))
    return [f"> {line}" if line.strip() else ">" for line in lines]


def to_markdown(
    messages: Sequence[Record],
    *,
    title: str,
    role_names: Mapping[str, str],
    caption: Callable[[dict[str, Any]], str] | None = None,
    system: str | None = None,
) -> str:
    """`# title`, the system prompt quoted if any, then per message `### role` and its quote."""
    lines = [f"# {plain_text(title)}", ""]
    if system:
        lines += quote(safe_markdown(system)) + [""]
    for m in messages:
        lines += [f"### {plain_text(role_names.get(m['role'], m['role']))}", ""]
        lines += quote(safe_markdown(m["content"]))
        if m.get("stopped"):
            lines += [">", f"> {STOPPED_MARK}"]
        if m.get("error"):
            lines += ["", f"**{plain_text(m['error'])}**"]
        if caption is not None and m.get("stats"):
            lines += ["", f"*{plain_text(caption(m['stats']))}*"]
        lines.append("")
    return "\n".join(lines)


def to_json(
    messages: Sequence[Record],
    *,
    model: str,
    system: str | None = None,
    sampling: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> str:
    """One object: model, when, system prompt, sampling, and the messages with their stats."""
    doc = {
        "model": model,
        "exported_at": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "system": system,
        "sampling": dict(sampling or {}),
        "messages": [dict(m) for m in messages],
    }
    return json.dumps(doc, ensure_ascii=False, indent=2)


def filename(model: str, ext: str, now: datetime | None = None) -> str:
    """`edgechat-<model>-<YYYYmmdd-HHMM>.<ext>`, with only safe characters from the model name."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("._") or "chat"
    return f"edgechat-{safe}-{stamp}.{ext}"


def from_json(text: str | bytes) -> tuple[list[Record], dict[str, Any]]:
    """A `to_json` file read back: (its records, meta: model, system, sampling, exported_at), with
    the records' own rule and caps (edgechat.records). Anything else is a ValueError with one line
    saying what is wrong. Unknown keys are dropped, so files from a newer version still load."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ValueError("not a JSON chat export: not UTF-8 text") from None
    if len(text) > records.IMPORT_MAX_CHARS:
        raise ValueError(f"chat file is {len(text)} characters; at most {records.IMPORT_MAX_CHARS} are accepted")
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"not a JSON chat export: {str(err)[:120]}") from None
    if not isinstance(doc, dict):
        raise ValueError('not a JSON chat export: no "messages" list')
    messages = records.valid_list(doc.get("messages"))
    meta = {
        "model": records.text(doc.get("model", ""), "model", 200),
        "system": None if doc.get("system") is None else records.text(doc["system"], "system", records.SETTINGS_MAX),
        "sampling": records.scalars(doc.get("sampling", {}), "sampling"),
        "exported_at": records.text(doc.get("exported_at", ""), "exported_at", 64),
    }
    return messages, meta


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a chat file may hold")
