"""The fragment-rerun race of a busy box, played on demand for the `streamlit run` a test starts
(EDGECHAT_LATE_FRAGMENT_S=SECONDS: harness.servers.hook_env("lateloop", EDGECHAT_LATE_FRAGMENT_S="1")).

On a loaded box the event loop runs behind the script threads: a fragment rerun (a `run_every`
tick) that arrived while a script run was ending can be handled only after that run's thread has
finished, while the run's last messages still wait on the loop behind it. Here the event loop
handles a fragment rerun that arrives during a script run only once that run's thread has ended
(waiting at most EDGECHAT_LATE_FRAGMENT_S): the loop is behind by exactly the rest of the run, the
worst case of the real race, every time. Streamlit's own code is unchanged; nothing here runs
unless the variable is set.
"""

from __future__ import annotations

import os
import sys

HOLD_S = float(os.environ.get("EDGECHAT_LATE_FRAGMENT_S", "0") or 0)


def _install(hold_s: float) -> None:
    from streamlit.runtime.app_session import AppSession

    original = AppSession.handle_backmsg

    def handle_backmsg(self: AppSession, msg: object) -> None:
        if msg.WhichOneof("type") == "rerun_script" and msg.rerun_script.fragment_id:  # type: ignore[attr-defined]
            thread = getattr(self._scriptrunner, "_script_thread", None)
            if thread is not None:
                thread.join(hold_s)  # blocks the event loop, as a backlog of other work would
        original(self, msg)

    AppSession.handle_backmsg = handle_backmsg  # type: ignore[method-assign]


if HOLD_S > 0 and "streamlit" in sys.orig_argv[1:4]:  # `python -m streamlit run ...` only
    _install(HOLD_S)
