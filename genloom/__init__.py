"""genloom: a plugin framework for generative sequence models.

Importing this package is cheap: it loads no plugin, torch or Lightning. Plugins are
discovered on first registry access (:func:`genloom.core.plugins.get_registry`).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "compare", "load", "report"]


def load(path_or_config, **overrides):
    """Load a trained run directory, checkpoint or config and return a :class:`genloom.core.generation.Generator`."""
    from genloom.core.generation import load as _load

    return _load(path_or_config, **overrides)


def report(run, out=None, **options):
    """Write one offline HTML page about a run directory; see :func:`genloom.reporting.report` (``genloom report``)."""
    from genloom.reporting import report as _report

    return _report(run, out, **options)


def compare(run, decoders, prompts=None, out=None, **options):
    """Run decoders side by side and write one offline HTML page; see :func:`genloom.reporting.compare` (``genloom compare``)."""
    from genloom.reporting import compare as _compare

    return _compare(run, decoders, prompts, out, **options)
