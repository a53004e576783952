"""Chat templates: model-family knowledge that turns messages into prompt token ids.

Templates, not engines, know turn markers and stop ids. A template's own markers are tokenized
with `special=True`; message contents always with `special=False`, so text a person types can never
become a control token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Protocol

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgechat.errors import ConfigError
from edgechat.reasoning import CLOSE, OPEN
from edgechat.tokenizers import IncrementalDetokenizer, Tokenizer, decode
from edgechat.types import ROLES, Message


class ChatTemplate(Protocol):
    name: str
    opens_reasoning: bool  # the prompt ends inside a `<think>` part (DeepSeek-R1's template)
    drops_past_reasoning: bool  # earlier answers' `<think>` parts are left out of the prompt

    def render(self, messages: Sequence[Message]) -> list[int]:
        """Prompt ids for `messages`, ending where the assistant's answer begins."""
        ...


# Content stand-ins: private-use code points that no template touches, so the rendered text can
# be split back into template markers and verbatim message contents.
_MARK = re.compile("\ue000(\\d+)\ue001")


class JinjaChatTemplate:
    """The `tokenizer.chat_template` carried in a GGUF, rendered as transformers and llama.cpp do
    (sandboxed jinja2, `add_generation_prompt=True`, `bos_token`/`eos_token` defined)."""

    name = "jinja"

    def __init__(self, source: str, tokenizer: Tokenizer, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise_template_error
        env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as err:
            raise ValueError(f"the model's chat template does not parse: {err}") from None
        self._tokenizer = tokenizer
        self._bos_token = bos_token
        self._eos_token = eos_token
        self.drops_past_reasoning, self.opens_reasoning = self._probe_reasoning()

    def _probe_reasoning(self) -> tuple[bool, bool]:
        """What the template does with a reasoning model's `<think>` part, asked of the template
        itself: whether it leaves an earlier answer's think part out of the prompt (Qwen3's and
        DeepSeek-R1's do), and whether its generation prompt opens one."""
        answer = "<think>\nprobe-reasoning\n</think>\n\nprobe-answer"
        turns = [("user", "probe-question"), ("assistant", answer), ("user", "probe-question")]
        try:
            past = self.render_text([Message(role=r, content=c) for r, c in turns])
            prompt = self.render_text([Message(role="user", content="probe-question")])
        except Exception:  # noqa: BLE001 — a template that refuses the probe keeps answers as they are
            return False, False
        return "probe-reasoning" not in past and "probe-answer" in past, prompt.rstrip().endswith(OPEN)

    def render_text(self, messages: Sequence[Message]) -> str:
        return self._template.render(
            messages=list(messages),
            add_generation_prompt=True,
            bos_token=self._bos_token,
            eos_token=self._eos_token,
        )

    def render(self, messages: Sequence[Message]) -> list[int]:
        if self.drops_past_reasoning:  # as the template would, before contents become stand-ins
            last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
            messages = [
                Message(role=m["role"], content=m["content"].rsplit(CLOSE, 1)[-1].lstrip())
                if m["role"] == "assistant" and i < last_user
                else m
                for i, m in enumerate(messages)
            ]
        marked = [Message(role=m["role"], content=f"\ue000{i}\ue001") for i, m in enumerate(messages)]
        text = self.render_text(marked)
        ids: list[int] = []
        pos = 0
        for match in _MARK.finditer(text):
            ids += self._tokenizer.encode(text[pos : match.start()], special=True)
            ids += self._tokenizer.encode(messages[int(match.group(1))]["content"], special=False)
            pos = match.end()
        ids += self._tokenizer.encode(text[pos:], special=True)
        bos = self._tokenizer.bos_id
        if self._tokenizer.add_bos and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids


def _raise_template_error(message: str) -> None:
    raise ValueError(f"chat template: {message}")


class Baichuan2ChatTemplate:
    """Baichuan2-Chat's own prompt format, exactly as the model was fine-tuned on it.

    Sources: `build_chat_input` in Baichuan2-7B-Chat's `generation_utils.py` (Hugging Face
    baichuan-inc/Baichuan2-7B-Chat; the same function is copied verbatim in many public repos)
    and the fine-tuning data layout of baichuan-inc/Baichuan2 `fine-tune/fine-tune.py`:
    - a system prompt goes first as plain text, no marker;
    - each user message is `<reserved_106>` (195) + its text; each assistant message is
      `<reserved_107>` (196) + its text; contents are encoded as they are (not stripped);
    - no eos between turns: training puts eos only at the very end of a conversation (and as the
      *label* of the next user marker), so the model stops itself with eos, but never sees one
      inside a prompt;
    - the prompt ends with 196 unless the last message is the assistant's (then the model
      continues that answer).
    Where sophon-demo's `baichuan2.py` (the seed) differs, we follow the model: the seed encodes
    `"<reserved_106>" + text + "<reserved_107>"` and drops the first id "assuming a bos", but
    Baichuan2's tokenizer adds none (token_config `add_bos_token: false`), so the seed loses the
    195 of every user turn and the first token of every earlier answer; it also strips contents.
    """

    name = "baichuan2"
    opens_reasoning = drops_past_reasoning = False
    USER_ID = 195
    ASSISTANT_ID = 196

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer

    def render(self, messages: Sequence[Message]) -> list[int]:
        ids: list[int] = []
        for m in messages:
            text = self._tokenizer.encode(m["content"], special=False)
            if m["role"] == "system":
                ids += text
            elif m["role"] == "user":
                ids += [self.USER_ID, *text]
            else:
                ids += [self.ASSISTANT_ID, *text]
        if not messages or messages[-1]["role"] != "assistant":
            ids.append(self.ASSISTANT_ID)
        return ids


def check_messages(messages: Sequence[Message]) -> None:
    for m in messages:
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"a history entry must be {{'role': one of {ROLES}, 'content': str}}; got {m!r}")


class ChatTokenizer:
    """What a chat client needs of the model family: prompt ids for messages, stop ids and a
    detokenizer. This is the `tokenizer` handed to `Baichuan2(handle, engine, tokenizer)`."""

    def __init__(self, tokenizer: Tokenizer, template: ChatTemplate) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.stop_ids = tokenizer.stop_ids
        self.opens_reasoning = template.opens_reasoning  # answers start inside <think> (reasoning.py)
        # a reasoning model (its template knows <think>): answers are split into reasoning + answer
        self.reasoning = template.opens_reasoning or template.drops_past_reasoning

    def render(self, messages: Sequence[Message], continue_last: bool = False) -> list[int]:
        """Prompt ids ending where the assistant speaks; with `continue_last` the last message is
        a partial answer and the ids end inside it, so generation goes on from its last word."""
        check_messages(messages)
        if not continue_last:
            return self.template.render(messages)
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise ValueError("only a partial assistant answer after a question can be continued")
        return self.template.render(messages[:-1]) + self.tokenizer.encode(messages[-1]["content"], special=False)

    def detokenizer(self) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.tokenizer)

    def decode(self, ids: Sequence[int], special: bool = False) -> str:
        return decode(self.tokenizer, ids, special)


def template_for_gguf(metadata: dict[str, str], tokenizer: Tokenizer) -> ChatTemplate:
    """Baichuan GGUFs get the Baichuan2 format (their GGUF carries no usable template);
    others use the jinja template the GGUF carries."""
    arch = metadata.get("general.architecture", "")
    if arch.startswith("baichuan"):
        return Baichuan2ChatTemplate(tokenizer)
    source = metadata.get("tokenizer.chat_template")
    if not source:
        raise ConfigError(
            "the GGUF carries no tokenizer.chat_template and is not a Baichuan model: "
            "use a chat/instruct GGUF converted with its template"
        )
    return JinjaChatTemplate(
        source,
        tokenizer,
        bos_token=_token_text(tokenizer, tokenizer.bos_id),
        eos_token=_token_text(tokenizer, tokenizer.eos_id),
    )


def _token_text(tokenizer: Tokenizer, token: int | None) -> str:
    if token is None or token < 0:
        return ""
    return tokenizer.token_bytes(token, special=True).decode("utf-8", "replace")
