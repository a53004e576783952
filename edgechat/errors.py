"""Errors a person can act on, so entry points can print one line and exit 2."""


class ConfigError(Exception):
    """Bad configuration: the message names the file or flag and what to do."""

    exit_code = 2


class RequestError(Exception):
    """A request that cannot be served (busy, too long, engine failure); shown in that session only."""
