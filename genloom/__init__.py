"""genloom: a plugin framework for generative sequence models.

Importing this package is cheap: it loads no plugin, torch or Lightning. Plugins are
discovered on first registry access (:func:`genloom.core.plugins.get_registry`).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(path_or_config, overrides=None, *, seed=None, device=None, registry=None):
    """Load a model to generate with and return a :class:`genloom.core.generation.Generator`.

    ``path_or_config``: a trained run directory, a ``model.safetensors`` or ``.ckpt`` file inside
    one, a config ``.yaml`` path or a config dict (an untrained model, its weights drawn from
    ``seed``, default the config's ``seed``). ``overrides``: ``key=value`` strings applied to the
    config. ``device``: where to put the model. See :func:`genloom.core.generation.load`.
    """
    from genloom.core.generation import load as _load

    return _load(path_or_config, overrides, seed=seed, device=device, registry=registry)
