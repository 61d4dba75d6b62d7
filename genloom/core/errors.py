"""Errors a user can act on. The CLI prints them as one paragraph and exits with code 2."""

from __future__ import annotations


class GenloomError(Exception):
    """Base class of genloom's own errors."""


class ConfigError(GenloomError):
    """A config (or command-line override) is wrong; the message names the config path.

    ``path`` is the dotted config path (``backbone.n_layers``), ``source`` the file (and line)
    where it came from when known.
    """

    def __init__(self, message: str, *, path: str | None = None, source: str | None = None):
        import re

        # a message that already carries the prefix (one ConfigError re-raised inside another)
        # keeps a single "config error at ...:" prefix, with the inner location where the outer has none
        inner = re.match(r"config error(?: at '([^']*)')?(?: in (.+?))?: ", str(message))
        if inner:
            message = str(message)[inner.end():]
            if path and inner.group(1) and inner.group(1) != path:
                message = f"at '{inner.group(1)}': {message}"  # a location inside the outer node (a nested model config)
            else:
                path = path or inner.group(1)
            source = source or inner.group(2)
        self.message = message
        """The message without the location prefix."""
        self.path = path
        self.source = source
        where = []
        if path:
            where.append(f"at '{path}'")
        if source:
            where.append(f"in {source}")
        prefix = f"config error {' '.join(where)}: " if where else "config error: "
        super().__init__(prefix + message)


class PluginError(GenloomError):
    """A plugin could not be loaded or broke a contract."""


class GenerationError(GenloomError, ValueError):
    """A generation request is wrong (an empty prompt, an option a decoder cannot honour, a length
    beyond the model's positions); the message names the argument or option."""


class CheckpointError(GenloomError):
    """A checkpoint or run directory is missing, truncated or corrupted; the message names the file."""


def closest(name: str, candidates) -> str | None:
    """The candidate closest to ``name`` (for a did-you-mean), or None."""
    import difflib

    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return match[0] if match else None
