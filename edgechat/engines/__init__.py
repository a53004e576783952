"""Engines: the token-level model runners the scheduler thread owns (sail, llamacpp; the
protocol in base.py). `edgechat.runtime.load_runtime` picks one from the settings."""
