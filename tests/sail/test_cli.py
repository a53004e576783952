"""The seed's command line and page on the emulated TPU, in each of the four installs:
`python3 baichuan2.py --bmodel M --token DIR --dev_ids 0` and `streamlit run web_demo.py -- ...`."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgechat.types import Message
from tests.sail.harness import REPO, Mode, Reference, cli


def test_the_seed_flags_end_to_end(bmodel: Path, token_dir: Path, mode: Mode) -> None:
    question = "你好，请用一句话介绍你自己。"
    flags = ["--dev_ids", "0", "--max-new-tokens", "32", "--prompt", question]
    out = cli(mode, "--bmodel", str(bmodel), "--token", str(token_dir), *flags)
    assert out.returncode == 0, out.stderr

    from edgechat.templates import Baichuan2ChatTemplate, ChatTokenizer
    from edgechat.tokenizers import decode
    from edgechat.tokenizers.baichuan import BaichuanTokenizer

    tok = BaichuanTokenizer(token_dir)
    prompt = ChatTokenizer(tok, Baichuan2ChatTemplate(tok)).render([Message(role="user", content=question)])
    expected = Reference(bmodel).generate(prompt, 32, tok.stop_ids)
    assert out.stdout == decode(tok, expected) + "\n"
    assert "baichuan2-emulated" in out.stderr and "FTL:" in out.stderr
    assert f"sophon-sail {mode.version} ({mode.dist})" in out.stderr and f"K/V {mode.kv_dtype}" in out.stderr


def test_a_tpu_id_the_box_lacks(bmodel: Path, token_dir: Path, mode: Mode) -> None:
    out = cli(mode, "--bmodel", str(bmodel), "--token", str(token_dir), "--dev_ids", "5", "--prompt", "hi")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "--dev_ids 5: no TPU 5 here; this machine has TPU ids 0..0" in out.stderr


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--dev_ids", "0,x"], "--dev_ids/--dev-ids: invalid convert value: '0,x'"),
        (["--bmodel", "/nonexistent.bmodel"], "bmodel not found"),
        (["--max-prompt-share", "1.5"], "--max-prompt-share must be <= 1"),
    ],
)
def test_the_seed_flags_bad_input(token_dir: Path, flags: list[str], needle: str) -> None:
    out = cli(None, "--bmodel", str(REPO / "README.md"), "--token", str(token_dir), *flags, "--prompt", "hi")
    assert out.returncode == 2
    assert needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_two_tpu_ids_on_a_one_tpu_bmodel_answer(bmodel: Path, token_dir: Path, mode: Mode) -> None:
    out = cli(
        mode, "--bmodel", str(bmodel), "--token", str(token_dir), "--dev_ids", "0,1", "--prompt", "hi",
        SAIL_EMULATOR_TPU_NUM="2",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr  # one engine per TPU: the terminal answers
    assert out.stdout.strip(), out.stdout


def test_the_page_with_the_seed_flags(
    bmodel: Path, token_dir: Path, mode: Mode, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.testing.v1 import AppTest

    flags = ["--bmodel", str(bmodel), "--token", str(token_dir), "--dev_ids", "0", "--max-new-tokens", "16"]
    monkeypatch.setattr("sys.argv", ["web_demo.py", *flags])
    at = AppTest.from_file(str(REPO / "web_demo.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "baichuan2-emulated"
    question = "你好，今天怎么样？"
    at.chat_input[0].set_value(question).run()
    assert not at.exception, at.exception

    tok = at.session_state.conversation.client.tokenizer
    prompt = tok.render([Message(role="user", content=question)])
    expected = tok.decode(Reference(bmodel).generate(prompt, 16, tok.stop_ids))
    shown = [(m.name, m.markdown[0].value.strip()) for m in at.chat_message]  # Markdown drops edge spaces
    assert shown == [("user", question), ("assistant", expected.strip())]
    panel = " ".join(c.value for c in at.sidebar.caption)
    assert f"sophon-sail {mode.version}" in panel  # the server panel names the wheel
