"""The page's flags (language, password, input cap, rate limit) and the Streamlit settings it runs with."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from streamlit import config

from edgechat.config import parse_settings
from edgechat.errors import ConfigError
from tests.conftest import REPO


def test_page_flags_have_safe_defaults() -> None:
    s = parse_settings([], env={})
    assert (s.lang, s.password, s.max_input_chars, s.rate_limit) == ("en", None, 8000, 20)


def test_page_flags_from_environment_and_flags() -> None:
    env = {"EDGECHAT_LANG": "zh", "EDGECHAT_PASSWORD": "s3cret", "EDGECHAT_RATE_LIMIT": "5"}
    s = parse_settings(["--max-input-chars", "100"], env=env)
    assert (s.lang, s.password, s.max_input_chars, s.rate_limit) == ("zh", "s3cret", 100, 5)
    assert parse_settings(["--lang", "en"], env=env).lang == "en"


def test_password_never_shows_in_the_settings_repr() -> None:
    assert "s3cret" not in repr(parse_settings(["--password", "s3cret"], env={}))


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--lang", "fr"], {}, "--lang"),
        ([], {"EDGECHAT_LANG": "de"}, "EDGECHAT_LANG"),
        (["--max-input-chars", "0"], {}, "--max-input-chars"),
        (["--rate-limit", "-1"], {}, "--rate-limit"),
    ],
)
def test_bad_page_flags_are_one_clear_line(argv: list[str], env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_settings(argv, env=env)


# What .streamlit/config.toml must make Streamlit 1.67 do on a LAN box (issue 14).
HARDENED = {
    "server.maxUploadSize": 0,  # no uploader on the page: any non-empty upload is a 413
    "server.maxWidgetStateSize": 1,  # client frames over 1 MB close the websocket
    "server.maxMessageSize": 8,
    "server.fileWatcherType": "none",
    "server.runOnSave": False,
    "server.enableXsrfProtection": True,
    "server.enableCORS": True,
    "server.enableStaticServing": False,
    "server.enableAgentApi": False,
    "server.headless": True,
    "browser.gatherUsageStats": False,
    "client.toolbarMode": "viewer",
    "client.showErrorDetails": "none",
    "client.showErrorLinks": False,
    "runner.postScriptGC": False,  # no full-process GC after every run: it starved the server (issue 13)
}


def streamlit_options(keys: list[str]) -> dict[str, object]:
    """The options as Streamlit itself reads them in the repository (where `streamlit run` starts)."""
    code = (
        "import json, sys; from streamlit import config; config.get_config_options(); "
        "print(json.dumps({k: config.get_option(k) for k in sys.argv[1:]}))"
    )
    out = subprocess.run([sys.executable, "-c", code, *keys], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_every_key_in_the_streamlit_config_exists_in_this_streamlit() -> None:
    """Streamlit ignores an unknown key with a log line: a typo would leave the default on."""
    keys, section = [], ""
    for line in (REPO / ".streamlit" / "config.toml").read_text().splitlines():
        if m := re.match(r"\[(\w+)\]\s*$", line):
            section = m.group(1)
        elif m := re.match(r"(\w+)\s*=", line):
            keys.append(f"{section}.{m.group(1)}")
    config.get_config_options()
    assert [k for k in keys if k not in config._config_options] == []
    assert set(HARDENED) <= set(keys)  # stated in the file, not left to Streamlit's defaults


def test_streamlit_reads_the_hardened_settings() -> None:
    assert streamlit_options(list(HARDENED)) == HARDENED


def test_host_checking_is_left_to_the_page() -> None:
    """allowedHosts depends on the box's names (a flag), and Streamlit's option guards only the
    websocket: the file must not pin it to names that would lock the LAN out."""
    assert streamlit_options(["server.allowedHosts"]) == {"server.allowedHosts": []}
