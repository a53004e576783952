"""Structured output: an OpenAI `response_format` as a GBNF grammar for llama.cpp's grammar sampler.

The grammars are llama-cpp-python's own (`llama_cpp.llama_grammar`): its JSON grammar for
`json_object`, and its port of llama.cpp's json-schema-to-grammar converter for `json_schema`.
The module is imported only when a request asks and its backend can (llama.cpp), so a TPU or
remote box never loads llama.cpp for it.
"""

from __future__ import annotations

import functools
import json
from typing import Any


def grammar_for(response_format: dict[str, Any]) -> str:
    """GBNF (root rule `root`) for a checked response_format (edgechat.openai_schema); ValueError
    with the converter's reason when a schema cannot be turned into one."""
    if response_format["type"] == "json_object":
        from llama_cpp.llama_grammar import JSON_GBNF

        return JSON_GBNF
    return _schema_grammar(json.dumps(response_format["schema"], ensure_ascii=False))


@functools.lru_cache(maxsize=64)
def _schema_grammar(schema: str) -> str:
    """Cached: a program sends the same schema with every request."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(schema)
    except Exception as err:  # noqa: BLE001 — the converter asserts, raises KeyError/ValueError/...
        raise ValueError(f"this JSON schema cannot be turned into a grammar ({type(err).__name__}: {err})") from None
