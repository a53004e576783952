"""A page for test_markdown_render: every hostile answer shown the way the chat page shows answers.

`streamlit run tests/e2e/markdown_page.py` with EDGECHAT_TEST_SINK=host:port (where the hostile
URLs point) and EDGECHAT_TEST_RAW=1 to show the answers unsanitized (proves the check can fail).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import streamlit as st  # noqa: E402

from edgechat.safe_markdown import safe_markdown  # noqa: E402
from tests.hostile_answers import BENIGN, hostile_answers  # noqa: E402

raw = os.environ.get("EDGECHAT_TEST_RAW") == "1"
for answer in hostile_answers(os.environ["EDGECHAT_TEST_SINK"]):
    with st.chat_message("assistant"):
        st.markdown(answer.text if raw else safe_markdown(answer.text))
with st.chat_message("assistant"):
    st.markdown(BENIGN if raw else safe_markdown(BENIGN))
