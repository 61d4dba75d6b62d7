"""genloom's hook specifications: the table of contents of the framework.

A plugin is a module (found through the ``genloom`` entry-point group) that implements some of
these hooks with ``@genloom.core.hookimpl``. Every hook takes keyword arguments only. The six
component hooks return lists of :class:`~genloom.core.records.Component` records; the plugin
manager stamps them with the plugin's distribution and version.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("genloom")


@hookspec(historic=True)
def genloom_addhooks(pluginmanager):
    """Add hook specifications of a plugin's own.

    Called once for every plugin as soon as it is registered (historic: plugins registered
    later still see it). Call ``pluginmanager.add_hookspecs(module_or_class)``, whose functions
    are marked with ``pluggy.HookspecMarker("genloom")``. Components call such hooks through
    ``ctx.hook`` (the build context). Returns nothing.
    """


@hookspec
def genloom_component_kinds():
    """Declare new component kinds beside the six core ones.

    Called when the registry is built. Return a list of
    :class:`~genloom.core.records.ComponentKind`; components of such a kind come from
    :func:`genloom_components` or from the kind's own ``hook`` and get registry look-up, config
    validation and listing. A kind's top-level ``config_key`` node is bound and built by assembly
    (after the tokenizer) and published as ``ctx.<config_key>``.
    """


@hookspec
def genloom_tokenizers():
    """Tokenizers: data <-> token sequences (ids or continuous latents); may be trainable.

    Called once when the registry is built. Return a list of ``records.tokenizer(...)``.
    """


@hookspec
def genloom_backbones():
    """Backbones: sequence mixers on hidden states (B, L, D) with an incremental state.

    Called once when the registry is built. Return a list of ``records.backbone(...)``.
    """


@hookspec
def genloom_heads():
    """Heads: embed inputs, and own the per-token output distribution (loss and sampler).

    Called once when the registry is built. Return a list of ``records.head(...)``.
    """


@hookspec
def genloom_objectives():
    """Objectives: training paradigms (how a batch is corrupted, which attention pattern, which positions count).

    Called once when the registry is built. Return a list of ``records.objective(...)``.
    """


@hookspec
def genloom_decoders():
    """Decoding strategies built on the shared propose/verify/commit loop.

    Called once when the registry is built. Return a list of ``records.decoder(...)``.
    """


@hookspec
def genloom_kernels():
    """Accelerator kernels: implementations of named ops (``attention``, ``selective_scan``...).

    Called once when the registry is built. Return a list of ``records.kernel(op=..., name=...)``.
    """


@hookspec
def genloom_components():
    """Components of any kind, including kinds declared by :func:`genloom_component_kinds`.

    Called once when the registry is built. Return a list of
    :class:`~genloom.core.records.Component` with ``kind`` set.
    """


@hookspec
def genloom_logits_processors():
    """Logits processors (temperature, top-k, watermarks, grammar constraints...).

    Called once when the registry is built. Return a list of ``records.processor(...)``;
    the factory builds a callable ``(logits, tokens) -> logits``.
    """


@hookspec
def genloom_datasets():
    """Data sets (embedded or reading local paths), named by the config's ``data`` node.

    Called once when the registry is built. Return a list of ``records.dataset(...)``.
    """


@hookspec
def genloom_callbacks():
    """Lightning callbacks users can name in the config's ``callbacks`` list.

    Called once when the registry is built. Return a list of ``records.callback(...)``.
    """


@hookspec
def genloom_configure(config):
    """Inspect or adjust the composed config before it is validated.

    Called by ``genloom train``/``config``/``generate`` with the OmegaConf ``DictConfig``
    after includes and overrides are merged. Modify it in place; return nothing.
    """
