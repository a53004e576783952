"""README says what the code does: its flag tables are the settings' own declarations."""

from __future__ import annotations

from edgechat.config import markdown_tables
from tests.conftest import REPO


def test_readme_flag_tables_are_the_declared_settings() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    shown = readme.split("<!-- flags:begin -->\n", 1)[1].split("<!-- flags:end -->", 1)[0]
    assert shown == markdown_tables(), "run: python3 -m edgechat.config, and paste it between the flags markers"


def test_readme_starts_with_the_two_set_up_commands() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = [block.split("```", 1)[0].strip() for block in setup.split("```bash\n")[1:]]
    assert len(commands) == 2
    assert commands[0].endswith("streamlit run web_demo.py") and commands[1].endswith("python3 -m pytest -q")
