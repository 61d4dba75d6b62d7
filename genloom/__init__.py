"""genloom: a plugin framework for generative sequence models.

Importing this package is cheap: it loads no plugin, torch or Lightning. Plugins are
discovered on first registry access (:func:`genloom.core.plugins.get_registry`).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(path_or_config, **overrides):
    """Load a trained run directory, checkpoint or config and return a :class:`genloom.core.generation.Generator`."""
    from genloom.core.generation import load as _load

    return _load(path_or_config, **overrides)
