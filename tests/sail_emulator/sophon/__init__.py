"""TEST DOUBLE of Sophgo's `sophon` package: only `sophon.sail`, emulated in numpy (see sail.py).

Put `tests/sail_emulator` first on PYTHONPATH to use it; never install it beside the real wheel.
Which sail version it plays is the version of the `*.dist-info` that `sail.install_as` writes
(a directory also on the path), else $SAIL_EMULATOR_API.
"""
