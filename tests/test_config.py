from pathlib import Path

import pytest

from edgechat.config import parse_settings
from edgechat.config_values import HANDOUT_MAX_BYTES, default_model_path
from edgechat.errors import ConfigError


def test_defaults_use_the_embedded_model() -> None:
    settings = parse_settings([], env={})
    assert settings.model is None and settings.resolved_backend == "llamacpp"
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_environment_sets_defaults_and_flags_win() -> None:
    env = {"EDGECHAT_TEMPERATURE": "0.2", "EDGECHAT_MAX_NEW_TOKENS": "7", "EDGECHAT_DEV_IDS": "1,2"}
    settings = parse_settings([], env=env)
    assert settings.sampling.temperature == 0.2 and settings.sampling.max_new_tokens == 7
    assert settings.dev_ids == (1, 2)
    assert parse_settings(["--temperature", "0.9"], env=env).sampling.temperature == 0.9


def test_seed_flags_choose_the_tpu_backend() -> None:
    settings = parse_settings(["--bmodel", "m.bmodel", "--token", "tok", "--dev_ids", "0"], env={})
    assert settings.resolved_backend == "sail"
    assert settings.bmodel == Path("m.bmodel") and settings.token == Path("tok") and settings.dev_ids == (0,)
    for ids in (["0,1"], ["0", "1"], ["0,", "1"]):  # LLM-TPU's comma form and the seed's spaces
        assert parse_settings(["--dev_ids", *ids], env={}).dev_ids == (0, 1)
    assert parse_settings(["--max-prompt-share", "0.25"], env={}).max_prompt_share == 0.25


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--temperature", "-1"], {}, "--temperature"),
        (["--top-p", "0"], {}, "--top-p"),
        (["--ubatch", "600"], {}, "--ubatch"),
        (["--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
        ([], {"EDGECHAT_TOP_K": "many"}, "EDGECHAT_TOP_K"),
        ([], {"EDGECHAT_BACKEND": "gpu"}, "EDGECHAT_BACKEND"),
    ],
)
def test_bad_configuration_is_one_clear_line(argv: list[str], env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(argv, env=env)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert err.value.exit_code == 2


def test_kv_budget_in_tokens_or_mebibytes() -> None:
    from edgechat.config_values import parse_kv_budget

    assert parse_kv_budget("4096", bytes_per_token=23040) == 4096
    assert parse_kv_budget("90MiB", bytes_per_token=23040) == 90 * 2**20 // 23040
    with pytest.raises(ConfigError, match="--kv-budget"):
        parse_settings(["--kv-budget", "lots"], env={})


def test_kv_budget_smaller_than_one_session_is_refused() -> None:
    from edgechat.runtime import load_runtime

    with pytest.raises(ConfigError, match="less than one session's context"):
        load_runtime(parse_settings(["--kv-budget", "1MiB", "--context-length", "1024", "--max-sessions", "1"], env={}))


def test_a_handout_that_is_missing_or_too_big_is_one_clear_line(tmp_path: Path) -> None:
    big = tmp_path / "big.md"
    big.write_text("word " * (HANDOUT_MAX_BYTES // 4), encoding="utf-8")
    for path, needle in ((tmp_path / "none.md", "no such file"), (big, "more than the")):
        with pytest.raises(ConfigError) as err:
            parse_settings(["--handout", str(path)], env={})
        assert "--handout" in str(err.value) and needle in str(err.value) and "\n" not in str(err.value)
        assert err.value.exit_code == 2
    fine = tmp_path / "fine.md"
    fine.write_text("# Today\nBring a pen.\n", encoding="utf-8")
    assert parse_settings(["--handout", str(fine)], env={}).handout == fine
