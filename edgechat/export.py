"""A chat as a file to keep: Markdown for people, JSON (with settings and stats) for tools.

Messages are the page's history dicts: role, content, and for answers optionally stopped, stats,
trimmed and error. Model text is written as it came; Markdown files are read in an editor, not
rendered by this page.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

STOPPED_MARK = "⏹"


def to_markdown(
    messages: Sequence[Mapping[str, Any]],
    *,
    title: str,
    role_names: Mapping[str, str],
    caption: Callable[[Mapping[str, Any]], str] | None = None,
    system: str | None = None,
) -> str:
    """`# title`, the system prompt if any, then one `### role` section per message."""
    lines = [f"# {title}", ""]
    if system:
        lines += [f"> {line}" for line in system.splitlines()] + [""]
    for m in messages:
        lines += [f"### {role_names.get(m['role'], m['role'])}", "", m["content"]]
        if m.get("stopped"):
            lines[-1] = f"{m['content']} {STOPPED_MARK}".lstrip()
        if m.get("error"):
            lines += ["", f"**{m['error']}**"]
        if caption is not None and m.get("stats"):
            lines += ["", f"*{caption(m['stats'])}*"]
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
