"""A chat as a file to keep: Markdown for people, JSON (with settings and stats) for tools, and
the JSON read back for the saved-chats import.

Messages are the page's history dicts: role, content, and for answers optionally stopped, stats,
trimmed and error. In the Markdown file each message is a blockquote: every line of it starts
with ">", so no message can end its quote and write a heading of its own (a reply containing
"\n### You\n" stays inside the reply). Message text goes through `safe_markdown` first: a file
opened in a Markdown previewer (editors render raw HTML and load images) must not fetch a pixel.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from edgechat.safe_markdown import plain_text, safe_markdown

STOPPED_MARK = "⏹"
ROLES = ("user", "assistant")
# Import caps: a saved chat is small; these keep a hostile file from costing the box.
MAX_IMPORT_BYTES = 2_000_000
MAX_IMPORT_MESSAGES = 500
MAX_IMPORT_MESSAGE_CHARS = 100_000


# Line breaks for some editors, not for CommonMark: spaces, so a raw reader sees no fake line start.
_SEPARATORS = re.compile("[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def quote(text: str) -> list[str]:
    """`text` as blockquote lines: every CommonMark line gets its ">", so nothing inside can end
    the quote and start a turn of its own."""
    lines = re.split(r"\r\n|\r|\n", _SEPARATORS.sub(" ", text))
    return [f"> {line}" if line.strip() else ">" for line in lines]


def to_markdown(
    messages: Sequence[Mapping[str, Any]],
    *,
    title: str,
    role_names: Mapping[str, str],
    caption: Callable[[Mapping[str, Any]], str] | None = None,
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
    messages: Sequence[Mapping[str, Any]],
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


def from_json(
    text: str | bytes,
    *,
    max_bytes: int = MAX_IMPORT_BYTES,
    max_messages: int = MAX_IMPORT_MESSAGES,
    max_chars: int = MAX_IMPORT_MESSAGE_CHARS,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A `to_json` file read back: (messages as the page keeps them, meta: model, system,
    sampling, exported_at). Anything else is a ValueError with one line saying what is wrong.
    Unknown keys are dropped, so files from a newer version still load."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > max_bytes:
        raise ValueError(f"chat file is {size} bytes; at most {max_bytes} are accepted")
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"not a JSON chat export: {str(err)[:120]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("messages"), list):
        raise ValueError('not a JSON chat export: no "messages" list')
    raw = doc["messages"]
    if len(raw) > max_messages:
        raise ValueError(f"{len(raw)} messages; at most {max_messages} are accepted")
    messages = [_message(i + 1, m, max_chars) for i, m in enumerate(raw)]
    meta = {
        "model": _text(doc.get("model", ""), "model", 200),
        "system": None if doc.get("system") is None else _text(doc["system"], "system", max_chars),
        "sampling": _scalars(doc.get("sampling", {}), "sampling"),
        "exported_at": _text(doc.get("exported_at", ""), "exported_at", 64),
    }
    return messages, meta


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a chat file may hold")


def _message(n: int, m: object, max_chars: int) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise ValueError(f"message {n}: expected an object, got {type(m).__name__}")
    if m.get("role") not in ROLES:
        raise ValueError(f"message {n}: role must be 'user' or 'assistant', not {str(m.get('role'))[:40]!r}")
    out: dict[str, Any] = {"role": m["role"], "content": _text(m.get("content"), f"message {n} content", max_chars)}
    if m.get("stopped") is not None:
        if not isinstance(m["stopped"], bool):
            raise ValueError(f"message {n}: stopped must be true or false")
        if m["stopped"]:
            out["stopped"] = True
    if m.get("stats") is not None:
        out["stats"] = _stats(n, m["stats"])
    if m.get("trimmed") is not None:
        if not _is_int(m["trimmed"]) or not 0 <= m["trimmed"] <= 1_000_000:
            raise ValueError(f"message {n}: trimmed must be a count of messages")
        out["trimmed"] = m["trimmed"]
    if m.get("error") is not None:
        out["error"] = _text(m["error"], f"message {n} error", 2000)
    return out


def _stats(n: int, stats: object) -> dict[str, Any]:
    """The figures under an answer: numbers where the page formats numbers."""
    figures = _scalars(stats, f"message {n} stats")
    for key, value in figures.items():
        if key != "finish_reason" and value is not None and not _is_number(value):
            raise ValueError(f"message {n}: stats {key} must be a number")
    return figures


def _scalars(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or len(value) > 32:
        raise ValueError(f"{what} must be an object of at most 32 settings")
    for key, v in value.items():
        if len(key) > 64 or not (v is None or _is_number(v) or isinstance(v, (bool, str)) and len(str(v)) <= 200):
            raise ValueError(f"{what}: {key[:64]!r} must be a number, true/false, null or a short text")
    return dict(value)


def _text(value: object, what: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text, got {type(value).__name__}")
    if len(value) > max_chars:
        raise ValueError(f"{what} is {len(value)} characters; at most {max_chars} are accepted")
    return value


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return _is_int(v) or isinstance(v, float) and math.isfinite(v)
