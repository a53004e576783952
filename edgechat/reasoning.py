"""The `<think>` part of a reasoning model's answer (DeepSeek-R1-Distill, Qwen3 thinking), told
apart from the answer as vLLM's reasoning parsers do: everything up to `</think>` is reasoning,
the rest is the answer. A model whose template opens the think part in the prompt (DeepSeek-R1's
generation prompt ends with `<think>\\n`) starts its answer inside it, with no opening tag.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def split_reasoning(text: str, opened: bool = False) -> tuple[str, str]:
    """(reasoning, answer) of a whole or partial answer; ("", text) when there is no think part.
    An unclosed think part is all reasoning (the answer has not started yet)."""
    body = text.lstrip()
    if body.startswith(OPEN):
        body, opened = body[len(OPEN) :], True
    if not opened:
        return "", text
    reasoning, closed, answer = body.partition(CLOSE)
    return reasoning.strip(), answer.lstrip() if closed else ""


REASONING = "reasoning_content"  # the field vLLM's reasoning parsers send the think part in


class ReasoningStream:
    """Splits a stream of text pieces into (REASONING, piece) and ("content", piece), holding
    back a piece that may be the start of a tag split across tokens; with `active=False` (a model
    that does not reason) every piece is content, as it comes."""

    def __init__(self, opened: bool = False, active: bool = True) -> None:
        self._state = ("reasoning" if opened else "start") if active else "content"
        self._held = ""

    def feed(self, piece: str) -> list[tuple[str, str]]:
        text, self._held = self._held + piece, ""
        out: list[tuple[str, str]] = []
        while text:
            if self._state == "start":
                stripped = text.lstrip()
                if stripped.startswith(OPEN):
                    self._state, text = "reasoning", stripped[len(OPEN) :]
                elif not stripped or OPEN.startswith(stripped):
                    self._held = text  # whitespace or a partial "<think": wait for more
                    return out
                else:
                    self._state = "content"
            elif self._state == "reasoning":
                before, closed, after = text.partition(CLOSE)
                if closed:
                    out.append((REASONING, before))
                    self._state, text = "after", after
                    continue
                keep = _partial_tag(text, CLOSE)
                out.append((REASONING, text[: len(text) - keep]))
                self._held = text[len(text) - keep :]
                return [(k, p) for k, p in out if p]
            elif self._state == "after":
                text = text.lstrip("\n")
                if text:
                    self._state = "content"
            else:
                out.append(("content", text))
                text = ""
        return [(k, p) for k, p in out if p]

    def flush(self) -> list[tuple[str, str]]:
        held, self._held = self._held, ""
        if not held:
            return []
        return [(REASONING if self._state == "reasoning" else "content", held)]


def _partial_tag(text: str, tag: str) -> int:
    """How many trailing characters of `text` could begin `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
