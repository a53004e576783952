"""A loaded box's late script runs, on demand, for the `streamlit run` a test starts
(EDGECHAT_SLOW_RUN_S=SECONDS; harness.servers.Server(slow_runs_s=...) puts this folder on PYTHONPATH).

On a busy box the script run that follows a question starts seconds after the question's widget
callback ran (the callback starts the answer; the run renders it). Here every full script run waits
EDGECHAT_SLOW_RUN_S between its callbacks and its script body, so a test can play a room of late
pages on a quiet box. Fragment runs are not slowed. Nothing here runs unless the variable is set.
"""

from __future__ import annotations

import os
import sys
import time

DELAY_S = float(os.environ.get("EDGECHAT_SLOW_RUN_S", "0") or 0)


def _install(delay_s: float) -> None:
    from streamlit.runtime.scriptrunner_utils.script_run_context import ScriptRunContext

    original = ScriptRunContext.on_script_start

    def on_script_start(self: ScriptRunContext) -> None:
        if not self.fragment_ids_this_run:
            time.sleep(delay_s)
        original(self)

    ScriptRunContext.on_script_start = on_script_start  # type: ignore[method-assign]


if DELAY_S > 0 and "streamlit" in sys.orig_argv[1:4]:  # `python -m streamlit run ...` only
    _install(DELAY_S)
