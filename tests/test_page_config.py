"""The page's flags: language, password, input cap and rate limit, from flags or EDGECHAT_*."""

from __future__ import annotations

import pytest

from edgechat.config import parse_settings
from edgechat.errors import ConfigError


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


def test_xsrf_protection_stays_on_with_the_projects_streamlit_config() -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    code = (
        "from streamlit import config; config.get_config_options(); "
        "print(config.get_option('server.enableXsrfProtection'), config.get_option('browser.gatherUsageStats'))"
    )  # gatherUsageStats False proves .streamlit/config.toml was read
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "False"], out.stderr
