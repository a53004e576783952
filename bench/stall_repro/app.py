"""The stall's ingredients in 25 lines (bench/stall_repro/drive.py opens several pages of it).

A process with a big Python heap (here 3 million small objects, as a loaded model, its tokenizer and
the libraries around it give) and, on every page, a `run_every` fragment like edgechat's server
panel had until issue 23. Each fragment tick is a script run, and Streamlit runs `gc.collect(2)`
after every script run (`runner.postScriptGC`, on by default): a full collection of the whole heap
that holds the GIL. With a few idle pages the event loop that serves every websocket waits behind
those collections.
"""

import os
import time

import streamlit as st


@st.cache_resource
def big_heap() -> list:
    return [[i] for i in range(int(os.environ.get("REPRO_HEAP_OBJECTS", "3000000")))]


big_heap()
every = float(os.environ.get("REPRO_RUN_EVERY", "0.5")) or None


@st.fragment(run_every=every)
def panel() -> None:
    st.caption(f"server load at {time.monotonic():.1f}")


panel()
if st.button("ping", key="ping"):
    st.session_state["pong"] = st.session_state.get("pong", 0) + 1
st.text(f"pong {st.session_state.get('pong', 0)}")
