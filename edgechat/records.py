"""A chat's records: the messages of one conversation as the page shows them, the store keeps them
and the exports write them, and the ONE rule for which records are good, with their caps.

A record is a plain dict (session state, JSON files and SQLite rows take it as it is), typed as
`Record`: a role and its text, and for an answer, only when set, `stopped` (Stop), `interrupted`
(its page went away mid-answer), `stats` (its figures), `trimmed` (messages left out to fit the
context) and `error`. Records from outside the conversation (an imported file, a save) go through
`valid`: unknown keys are dropped, an optional field that is null or false is left out, and
anything else wrong is a ValueError of one line that names the message ("message 3: ..."), so a
refused batch is refused whole with a reason a person can act on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, TypedDict

Role = Literal["user", "assistant"]
ROLES: tuple[Role, ...] = ("user", "assistant")
OPTIONAL = ("stopped", "interrupted", "stats", "trimmed", "error")  # the fields beside role and content

# What one conversation keeps (oldest turns go first), so one session cannot grow without bound.
MAX_RECORDS = 400
MAX_CHARS = 2 << 20  # characters of text in all its records together
# What one record may hold.
CONTENT_MAX = 1 << 20  # characters: more than any answer a 32k-token context holds
ERROR_MAX = 2000
TRIMMED_MAX = 1_000_000
STATS_KEYS_MAX = 32  # an answer's figures, and an imported chat's sampling settings: a few scalars
SCALAR_TEXT_MAX = 200
# What one import may bring: what the page's paste box holds (a pasted export travels in one
# websocket frame, capped at 1 MB by .streamlit/config.toml's maxWidgetStateSize) and at most
# MAX_RECORDS records, a conversation's worth: more would be dropped by its first answer.
IMPORT_MAX_CHARS = 900_000
SETTINGS_MAX = 64 * 1024  # characters of a chat's settings as JSON (system prompt + sampling)


class _Said(TypedDict):
    role: Role
    content: str


class Record(_Said, total=False):
    """One message of a chat; see the module's docstring for what each field means."""

    stopped: bool
    interrupted: bool
    stats: dict[str, Any]
    trimmed: int
    error: str


def valid(raw: object, n: int) -> Record:
    """`raw` as a record (a new dict); ValueError naming message `n` (1 is the first) if it is not one."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"message {n}: expected an object, got {type(raw).__name__}")
    role = raw.get("role")
    if role not in ROLES:
        raise ValueError(f"message {n}: role must be 'user' or 'assistant', not {str(role)[:40]!r}")
    record = Record(role=role, content=text(raw.get("content"), f"message {n} content", CONTENT_MAX))
    record.update(extras(raw, n))  # type: ignore[typeddict-item]
    return record


def valid_list(raw: object) -> list[Record]:
    """A chat's records (an import): a list of at most MAX_RECORDS good records."""
    if not isinstance(raw, list):
        raise ValueError('not a JSON chat export: no "messages" list')
    if len(raw) > MAX_RECORDS:
        raise ValueError(f"{len(raw)} messages; at most {MAX_RECORDS} are accepted (a conversation keeps that many)")
    return [valid(m, i + 1) for i, m in enumerate(raw)]


def extras(raw: Mapping[str, Any], n: int) -> dict[str, Any]:
    """The optional fields of message `n` that are set, checked; null or false ones are left out."""
    out: dict[str, Any] = {}
    for flag in ("stopped", "interrupted"):
        if raw.get(flag) is not None and not isinstance(raw[flag], bool):
            raise ValueError(f"message {n}: {flag} must be true or false")
        if raw.get(flag):
            out[flag] = True
    if raw.get("stats") is not None:
        out["stats"] = stats(raw["stats"], f"message {n} stats")
    trimmed = raw.get("trimmed")
    if trimmed is not None and not (_is_int(trimmed) and 0 <= trimmed <= TRIMMED_MAX):
        raise ValueError(f"message {n}: trimmed must be a count of messages")
    if trimmed:
        out["trimmed"] = trimmed
    if raw.get("error") is not None:
        out["error"] = text(raw["error"], f"message {n} error", ERROR_MAX)
    return out


def stats(value: object, what: str) -> dict[str, Any]:
    """An answer's figures: numbers where the page formats numbers (and the finish reason)."""
    figures = scalars(value, what)
    for key, v in figures.items():
        if key != "finish_reason" and v is not None and not _is_number(v):
            raise ValueError(f"{what} {key} must be a number")
    return figures


def scalars(value: object, what: str) -> dict[str, Any]:
    """A small object of numbers, true/false, null or short texts (figures, sampling settings)."""
    if not isinstance(value, Mapping) or len(value) > STATS_KEYS_MAX:
        raise ValueError(f"{what} must be an object of at most {STATS_KEYS_MAX} settings")
    for key, v in value.items():
        short = isinstance(v, (bool, str)) and len(str(v)) <= SCALAR_TEXT_MAX
        if not isinstance(key, str) or len(key) > 64 or not (v is None or _is_number(v) or short):
            raise ValueError(f"{what}: {str(key)[:64]!r} must be a number, true/false, null or a short text")
    return dict(value)


def text(value: object, what: str, cap: int) -> str:
    """`value` if it is text SQLite and JSON can keep (no lone surrogate) of at most `cap` characters."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text, got {type(value).__name__}")
    if len(value) > cap:
        raise ValueError(f"{what} is {len(value)} characters; at most {cap} are accepted")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{what} is not valid text (a lone surrogate at character {err.start})") from None
    return value


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return _is_int(v) or isinstance(v, float) and math.isfinite(v)
