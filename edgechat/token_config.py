"""The `--token DIR` config folder of a TPU model: its tokenizer and chat template.

Which family the folder holds comes from its files, not its name:
- `tokenizer.json` (+ `tokenizer_config.json`): what tpu-mlir's `llm_convert.py` copies beside an
  LLM-TPU bmodel (Qwen2.5, Qwen3, DeepSeek-R1-Distill, Llama 3): the Hugging Face tokenizer and
  the model's own Jinja chat template (`chat_template.jinja`, else tokenizer_config.json's
  `chat_template`), rendered sandboxed exactly as for a GGUF.
- otherwise Baichuan2's `tokenizer.model` (sophon-demo's token_config) and its fixed format.
"""

from __future__ import annotations

from pathlib import Path

from edgechat.errors import ConfigError
from edgechat.templates import Baichuan2ChatTemplate, ChatTokenizer, JinjaChatTemplate
from edgechat.tokenizers.baichuan import BaichuanTokenizer
from edgechat.tokenizers.hf import HfTokenizer


def load_token_config(directory: Path) -> ChatTokenizer:
    """The chat tokenizer for the folder; each problem is one ConfigError naming the file."""
    if not (directory / "tokenizer.json").is_file():
        tokenizer = BaichuanTokenizer(directory)
        tokenizer.check_chat_ids()
        return ChatTokenizer(tokenizer, Baichuan2ChatTemplate(tokenizer))
    hf = HfTokenizer(directory)
    source = _template_source(directory, hf.config)
    text = [
        hf.token_bytes(i, special=True).decode("utf-8", "replace") if i is not None else ""
        for i in (hf.bos_id, hf.eos_id)
    ]
    try:
        template = JinjaChatTemplate(source, hf, bos_token=text[0], eos_token=text[1])
    except ValueError as err:
        raise ConfigError(f"{directory}: {err}") from None
    return ChatTokenizer(hf, template)


def _template_source(directory: Path, config: dict) -> str:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    source = config.get("chat_template")
    if isinstance(source, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default")
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(
            f"{directory} has no chat template (chat_template.jinja or tokenizer_config.json's chat_template): "
            "use the config folder of a chat/instruct model"
        )
    return source
