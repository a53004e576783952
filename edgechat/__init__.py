"""edgechat: one shared LLM, many chat sessions, on a TPU, a CPU or a remote server."""

__version__ = "0.1.0"
