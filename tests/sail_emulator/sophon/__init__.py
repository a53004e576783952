"""TEST DOUBLE of Sophgo's `sophon` package: only `sophon.sail`, emulated in numpy (see sail.py).

Put `tests/sail_emulator` first on PYTHONPATH to use it; never install it beside the real wheel.
"""
