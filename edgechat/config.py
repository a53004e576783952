"""Every setting declared once: its flag, environment name, default, bounds and help.

`baichuan2.py`, `web_demo.py` and the API share these flags so a command line moves between them
unchanged (`streamlit run web_demo.py -- --model X`). The parser, the checks, the page's slider
ranges and README's flag tables are all derived from the field metadata below (like vLLM's
`EngineArgs`). An environment variable is the field name upper-cased, prefixed EDGECHAT_
(EDGECHAT_MAX_NEW_TOKENS); flags win over it.
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgechat import config_values as values
from edgechat.errors import ConfigError
from edgechat.types import SamplingParams

ENV_PREFIX = "EDGECHAT_"
BACKENDS = ("auto", "sail", "llamacpp", "openai")
LANGS = ("en", "zh")  # the page's UI languages; edgechat.ui_text holds the strings
GROUPS = {  # README's flag tables, in this order
    "model": "Model and backend",
    "serving": "Serving many people",
    "answer": "Answers (defaults; each person can lower them in the page)",
    "page": "The page",
    "history": "Saved chats",
    "api": "The API for programs on the LAN",
    "remote": "In front of an OpenAI-compatible server",
    "terminal": "Terminal only",
}


@dataclass(frozen=True)
class Option:
    """How one Settings field appears on the command line, in checks, in the page and in README."""

    help: str
    group: str
    flag: str = ""  # default: --field-name
    aliases: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None  # strictly greater than (top-p > 0)
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], Any] | None = None  # converts/validates a parsed value; raises ConfigError
    secret: bool = False  # never in repr; README says to prefer the environment variable
    page_step: float | None = None  # a sidebar widget from minimum to maximum in this step
    shown_default: str = ""  # README's Default column where the default is computed at start
    metavar: str = ""  # default: N, X, PATH or TEXT from the field's type


def option(default: Any, help: str, group: str, **kw: Any) -> Any:
    """A Settings field with its Option; mutable defaults are not used, so `default` suffices."""
    secret = kw.get("secret", False)
    return field(default=default, repr=not secret, metadata={"option": Option(help, group, **kw)})


@dataclass(frozen=True)
class Settings:
    # ---- model and backend ----
    backend: str = option(
        "auto", "`sail` (TPU) when --bmodel is given, `openai` when --base-url is, else `llamacpp`", "model",
        choices=BACKENDS,
    )  # fmt: skip
    model: Path | None = option(
        None, "GGUF file for llama.cpp", "model", shown_default="embedded SmolLM2-135M-Instruct Q4_1"
    )
    bmodel: Path | None = option(None, "Sophgo bmodel: selects the TPU (sail) backend", "model")
    token: Path = option(
        Path("token_config"),
        "TPU model's config folder: Baichuan2's tokenizer.model, or tokenizer.json + chat template (Qwen, DeepSeek-R1)",
        "model",
    )
    dev_ids: tuple[int, ...] = option(
        (0,), "TPU device ids as bm-smi lists them (`0 1` or `0,1`)", "model", flag="--dev_ids", aliases=("--dev-ids",)
    )
    context_length: int = option(2048, "tokens per conversation (prompt + answer), capped by the model's", "model",
                                 minimum=64)  # fmt: skip
    threads: int | None = option(None, "llama.cpp CPU threads", "model", minimum=1, shown_default="all cores")
    ubatch: int = option(
        63, "llama.cpp micro-batch rows: 63 keeps greedy answers bit-identical however prompts are chunked, batched "
        "or shared; 256 reads long prompts ~1.2x faster on the dev box, and greedy answers then depend on how prompts "
        "were batched or shared (README, Prefixes shared across sessions)", "model", minimum=1, maximum=512,
    )  # fmt: skip
    # ---- serving many people ----
    max_sessions: int = option(
        8, "no longer used (llama.cpp caches sessions in --kv-budget and --host-cache, the TPU holds "
        "--max-running slots); accepted so existing command lines still start", "serving", minimum=1,
    )  # fmt: skip
    max_running: int | None = option(
        None, "answers generating at once, each in its own KV buffer (on the TPU a KV slot, per chip); more wait "
        "in line, first come first served, taking turns by --time-slice", "serving", minimum=1, maximum=256,
        shown_default="16 (llama.cpp), 2 (TPU)",
    )  # fmt: skip
    time_slice: int = option(
        16, "tokens an answer makes before it lends its place to someone waiting, while people wait and every "
        "place is busy: it is parked in host RAM and goes on, unchanged, when its turn comes round again, sampled "
        "ones with their sampler; 0 = first come, first served",
        "serving", minimum=0, maximum=1 << 20,
    )  # fmt: skip
    max_prompt_share: float = option(
        0.5, "TPU: longest prompt as a share of the bmodel's context, the rest is answer room (the sample's 1/2)",
        "serving", above=0.0, maximum=1.0,
    )  # fmt: skip
    max_queue: int = option(32, "waiting requests; beyond it: 'busy, try again in a moment'", "serving", minimum=0)
    kv_budget: str | None = option(
        None, "KV cache, in tokens (`4096`) or MiB (`256MiB`), split among --max-running answers: full contexts "
        "when it holds enough, else shorter ones; idle sessions beyond it are parked in --host-cache",
        "serving", check=values.positive_size,
        shown_default="--max-running full contexts, at most a quarter of free RAM",
    )  # fmt: skip
    host_cache: str | None = option(
        None, "host RAM for parked sessions' KV caches, in MiB (`2048`, `2048MiB`) or GiB (`2GiB`); `0` = no "
        "parking (an idle session that loses its KV re-prefills)", "serving", check=values.host_cache_size,
        shown_default="a quarter of available RAM, at most 8 GiB",
    )  # fmt: skip
    session_ttl: float = option(
        3600.0, "seconds an idle session's KV cache is kept (in KV or parked) after its last answer", "serving",
        above=0,
    )  # fmt: skip
    request_timeout: float | None = option(
        300.0, "seconds after which an answer is stopped, so nobody holds a sequence forever", "serving", above=0
    )
    max_in_flight: int = option(
        2, "answers one client address may have running or waiting at once (page tabs and API calls)", "serving",
        minimum=1,
    )  # fmt: skip
    # ---- answers ----
    system: str | None = option(None, "system prompt", "answer", shown_default="the model's own")
    handout: Path | None = option(
        None, f"text or Markdown file (at most {values.HANDOUT_MAX_BYTES // 1024} KiB) that starts every "
        "conversation's system prompt, read once for the whole room and shown at the top of the page", "answer",
        check=values.handout_file,
    )  # fmt: skip
    max_new_tokens: int = option(512, "answer length cap (the page's setting cannot exceed it)", "answer",
                                 minimum=1, maximum=1 << 20, page_step=16)  # fmt: skip
    temperature: float = option(
        0.2, "0 = greedy (SmolLM2's card recommends 0.2, top-p 0.9)", "answer", minimum=0.0, maximum=2.0,
        page_step=0.05,
    )  # fmt: skip
    top_p: float = option(0.9, "nucleus sampling", "answer", above=0.0, maximum=1.0, page_step=0.05)
    top_k: int = option(40, "top-k sampling, 0 = off", "answer", minimum=0, maximum=200, page_step=1)
    repetition_penalty: float = option(
        1.0, "1 = off, as llama.cpp and transformers default", "answer", above=0.0, maximum=2.0, page_step=0.05
    )
    seed: int = option(42, "sampling seed", "answer")
    # ---- the page ----
    lang: str = option("en", "default UI language (each person can switch)", "page", choices=LANGS)
    password: str | None = option(
        None, "asked before any chat; prefer EDGECHAT_PASSWORD so it is not visible in `ps`", "page", secret=True
    )
    max_input_chars: int = option(8000, "longest message accepted, with a message saying the limit", "page",
                                  minimum=1)  # fmt: skip
    rate_limit: int = option(
        20, "questions (incl. regenerate/resend) per minute per client address; 0 = off", "page", minimum=0
    )
    allowed_hosts: str = option(
        "", "host names the page and API answer to, comma-separated (`*` = any); guards against DNS rebinding",
        "page", shown_default="this box's names and addresses",
    )  # fmt: skip
    trusted_proxy: str | None = option(
        None, "address of a reverse proxy whose X-Forwarded-For names the client (for per-address limits)", "page"
    )
    tls: bool = option(
        False, "serve the page, /v1, /metrics and /healthz over HTTPS on the same port (Streamlit's "
        "server.sslCertFile); without --tls-cert a self-signed certificate for this box's names and addresses, made "
        "once in --data-dir",
        "page",
    )  # fmt: skip
    tls_cert: Path | None = option(None, "certificate (PEM, with its chain) to serve instead; needs --tls-key, "
                                   "implies --tls", "page")  # fmt: skip
    tls_key: Path | None = option(None, "private key (PEM, unencrypted) of --tls-cert", "page")
    show_qr: bool = option(False, "the page's QR code large on everyone's main area (for a presenter), until closed",
                           "page")  # fmt: skip
    # ---- saved chats ----
    data_dir: Path | None = option(None, "folder of the saved-chats database", "history",
                                   shown_default="$XDG_DATA_HOME/edgechat or ~/.local/share/edgechat")  # fmt: skip
    no_history: bool = option(False, "keep chats in memory only, nothing on disk", "history")
    keep_days: int = option(30, "saved chats not touched for this many days are deleted at start; 0 = keep", "history",
                            minimum=0)  # fmt: skip
    # ---- the API ----
    api: str = option("on", "serve /v1 (OpenAI-compatible), /metrics and /healthz on the page's port", "api",
                      choices=("on", "off"))  # fmt: skip
    server_api_key: str | None = option(
        None, "key programs must send as `Authorization: Bearer KEY` to /v1 (default: --password, else open); "
        "prefer EDGECHAT_SERVER_API_KEY", "api", secret=True,
    )  # fmt: skip
    handout_api: bool = option(False, "API callers' conversations start with --handout too", "api")
    cors_origins: str = option(
        "", "web origins whose pages may call /v1 from a browser (`http://host:3000`, comma-separated, or `*`); "
        "empty = no CORS headers, so browsers keep other sites' pages out", "api", check=values.cors_origins,
        shown_default="none",
    )  # fmt: skip
    # ---- in front of an OpenAI-compatible server ----
    base_url: str | None = option(
        None, "an OpenAI-compatible server, e.g. http://gpu-box:8000/v1 (see Scaling out)", "remote",
        check=values.normalize_base_url,
    )  # fmt: skip
    api_key: str | None = option(
        None, "key edgechat sends to --base-url; prefer EDGECHAT_API_KEY", "remote", secret=True
    )
    model_name: str | None = option(None, "served model name", "remote", shown_default="the first in /v1/models")
    # ---- terminal only ----
    prompt: str | None = option(None, "answer this once and exit", "terminal")
    resume: str | None = option(None, "go on with a saved terminal chat (its id is printed at `exit`)", "terminal")
    show_prompt: bool = option(False, "print the rendered prompt's ids and text as JSON and exit", "terminal")

    @property
    def resolved_backend(self) -> str:
        """`auto` means a remote server when a base URL is given, the TPU when a bmodel is given,
        otherwise llama.cpp."""
        if self.backend != "auto":
            return self.backend
        if self.base_url is not None:
            return "openai"
        return "sail" if self.bmodel is not None else "llamacpp"

    @property
    def sampling(self) -> SamplingParams:
        """The answer settings every new conversation starts from."""
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
        )


def options() -> dict[str, Option]:
    """Field name -> Option, in declaration order."""
    return {f.name: f.metadata["option"] for f in fields(Settings)}


def flag_of(name: str) -> str:
    return options()[name].flag or "--" + name.replace("_", "-")


# ---- the parser, derived from the fields ----


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (exit 2, one line) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message} (see --help)")


def _kind(name: str) -> tuple[type, bool]:
    """The scalar type of a field and whether it is a tuple of them (dev_ids)."""
    hint = typing.get_type_hints(Settings)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True
    return hint, False


def _convert(scalar: type) -> Callable[[str], Any]:
    return Path if scalar is Path else scalar


def build_parser(prog: str = "edgechat") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="Multi-session LLM chat for edge AI boxes.")
    for f in fields(Settings):
        opt: Option = f.metadata["option"]
        scalar, many = _kind(f.name)
        names = [flag_of(f.name), *opt.aliases]
        default = opt.shown_default or ("" if f.default in (None, False) else _shown(f.default))
        shown = f" (default: {default})" if default else ""
        kw: dict[str, Any] = {
            "dest": f.name,
            "help": (opt.help + shown).replace("%", "%%"),
            "metavar": _metavar(f.name),
        }
        if scalar is bool:
            del kw["metavar"]
            parser.add_argument(*names, action="store_true", **kw)
            continue
        if many:
            kw["nargs"] = "+"
            kw["type"] = _tuple_items(scalar)
        else:
            kw["type"] = _convert(scalar)
        if opt.choices is not None:
            kw["choices"] = opt.choices
        parser.add_argument(*names, default=f.default, **kw)
    return parser


def _tuple_items(scalar: type) -> Callable[[str], Any]:
    """`--dev_ids 0 1` and `--dev_ids 0,1` both work: each item may hold commas."""

    def convert(text: str) -> list[Any]:
        return [scalar(part) for part in text.replace(",", " ").split()]

    return convert


def _env_defaults(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Environment variables become parser defaults, so flags still win over them."""
    for action in parser._actions:
        key = ENV_PREFIX + action.dest.upper()
        if not action.option_strings or action.dest == "help" or key not in env:
            continue
        raw = env[key]
        try:
            if isinstance(action, argparse._StoreTrueAction):
                value: Any = raw.strip().lower() in ("1", "true", "yes", "on")
            elif action.nargs == "+":
                value = [action.type(raw)]  # type: ignore[misc]
            else:
                value = action.type(raw)  # type: ignore[misc]
        except ValueError:
            raise ConfigError(f"{key}={raw!r} is not a valid value for {action.option_strings[0]}") from None
        if action.choices is not None and value not in action.choices:
            raise ConfigError(f"{key}={raw!r}: choose one of {', '.join(map(str, action.choices))}")
        parser.set_defaults(**{action.dest: value})


def _checked(name: str, value: Any) -> Any:
    """One field's bounds and own check; None (not given) is always allowed."""
    if value is None:
        return None
    opt = options()[name]
    flag = flag_of(name)
    if opt.minimum is not None and value < opt.minimum:
        raise ConfigError(f"{flag} must be >= {opt.minimum:g} (got {value:g}): {opt.help}")
    if opt.above is not None and value <= opt.above:
        raise ConfigError(f"{flag} must be > {opt.above:g} (got {value:g}): {opt.help}")
    if opt.maximum is not None and value > opt.maximum:
        raise ConfigError(f"{flag} must be <= {opt.maximum:g} (got {value:g}): {opt.help}")
    return opt.check(value) if opt.check is not None else value


def parse_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None, prog: str = "edgechat"
) -> Settings:
    parser = build_parser(prog)
    _env_defaults(parser, os.environ if env is None else env)
    ns = vars(parser.parse_args(list(argv) if argv is not None else None))
    for name, (_, many) in ((n, _kind(n)) for n in ns):
        if many:  # nargs="+" of lists: flatten `0,1` and `0 1`
            ns[name] = tuple(item for part in ns[name] for item in (part if isinstance(part, list) else [part]))
        ns[name] = _checked(name, ns[name])
    return Settings(**values.together(ns))


def markdown_tables() -> str:
    """README's flag tables, one per group (a test checks README carries exactly these)."""
    out: list[str] = []
    by_group: dict[str, list[str]] = {g: [] for g in GROUPS}
    for f in fields(Settings):
        opt: Option = f.metadata["option"]
        scalar, _ = _kind(f.name)
        value = "" if scalar is bool else " " + _metavar(f.name)
        names = ", ".join(f"`{n}{value}`" for n in (flag_of(f.name), *opt.aliases)).replace("|", "\\|")
        default = opt.shown_default or ("none" if f.default in (None, False) else _shown(f.default))
        meaning = opt.help.replace("|", "\\|")
        by_group[opt.group].append(f"| {names} | {default} | {meaning} |")
    for group, rows in by_group.items():
        if rows:
            out += [f"**{GROUPS[group]}**", "", "| Flag | Default | Meaning |", "| --- | --- | --- |", *rows, ""]
    return "\n".join(out).rstrip() + "\n"


def _metavar(name: str) -> str:
    opt = options()[name]
    if opt.metavar:
        return opt.metavar
    if opt.choices is not None:
        return "|".join(map(str, opt.choices))
    scalar, _ = _kind(name)
    return {int: "N", float: "X", Path: "PATH"}.get(scalar, "TEXT")


def _shown(default: Any) -> str:
    if isinstance(default, tuple):
        return " ".join(map(str, default))
    return f"`{default}`" if isinstance(default, str) else str(default)


if __name__ == "__main__":  # python3 -m edgechat.config: README's flag tables
    print(markdown_tables(), end="")
