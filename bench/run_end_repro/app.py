"""A run's end lost to a fragment rerun, in plain Streamlit (bench/run_end_repro/drive.py drives it).

One `run_every` fragment (as edgechat's server panel was) and a button whose run ends by drawing
"done N" — what a page shows once its run ended (in edgechat: the chat input enabled again). When the
fragment's rerun request is handled after the button's run finished but before that run's last
messages went through the event loop, AppSession.request_rerun finds the ScriptRunner stopped,
starts a new one, and every event of the old runner still queued on the loop is dropped as coming
from a non-current ScriptRunner: "done N" and script_finished never reach the browser.
"""

import os
import time

import streamlit as st


@st.fragment(run_every=float(os.environ.get("REPRO_RUN_EVERY", "0.3")))
def panel() -> None:
    st.caption(f"tick {time.monotonic():.1f}")


panel()
clicks = st.session_state.setdefault("clicks", 0)
if st.button("go", key="go"):
    st.session_state.clicks = clicks = clicks + 1
    time.sleep(0.1)  # the run's own work
st.text(f"done {clicks}")
