"""The minimal core of genloom: contracts, plugin manager, registry, config, assembly, training and generation.

Nothing here imports a plugin; plugins are found through the ``genloom`` entry-point group.
Modules that need torch (``model``, ``pattern``, ``state``, ``generation``, ``training``) are
imported only when used. Plugin modules import ``hookimpl`` and ``records`` from here.
"""

import pluggy as _pluggy

from genloom.core import records  # noqa: F401  (torch-free)

hookimpl = _pluggy.HookimplMarker("genloom")

__all__ = ["hookimpl", "records"]
