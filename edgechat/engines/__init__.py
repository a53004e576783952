"""Engines: token-level backends owned by the scheduler thread (sail, llamacpp) and the
chat-level remote backend. `edgechat.runtime.load_runtime` picks one from the settings."""
