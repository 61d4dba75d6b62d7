"""genloom: a plugin framework for generative sequence models.

Importing this package is cheap: it loads no plugin, torch or Lightning. Plugins are
discovered on first registry access (:func:`genloom.core.plugins.get_registry`).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "compare", "load", "report"]


def load(path_or_config, overrides=None, *, seed=None, device=None, registry=None):
    """Load a model to generate with and return a :class:`genloom.core.generation.Generator`.

    ``path_or_config``: a trained run directory, a ``model.safetensors`` or ``.ckpt`` file inside
    one, a config ``.yaml`` path or a config dict (an untrained model, its weights drawn from
    ``seed``, default the config's ``seed``). ``overrides``: ``key=value`` strings applied to the
    config. ``device``: where to put the model. See :func:`genloom.core.generation.load`.
    """
    from genloom.core.generation import load as _load

    return _load(path_or_config, overrides, seed=seed, device=device, registry=registry)


def report(run, out=None, **options):
    """Write one offline HTML page about a run directory; see :func:`genloom.reporting.report` (``genloom report``)."""
    from genloom.reporting import report as _report

    return _report(run, out, **options)


def compare(run, decoders, prompts=None, out=None, **options):
    """Run decoders side by side and write one offline HTML page; see :func:`genloom.reporting.compare` (``genloom compare``)."""
    from genloom.reporting import compare as _compare

    return _compare(run, decoders, prompts, out, **options)
