"""Component base classes and model assembly.

The six kinds as PyTorch objects:

- :class:`Tokenizer` -- data <-> tokens. ``encode``/``decode``; optional ``fit(dataset, ctx)``
  (BPE training, a VQ autoencoder) that assembly calls before model training.
- :class:`Backbone` -- ``forward(h, *, pattern, state=None, valid=None)`` on (B, L, D) hidden
  states; ``init_state(...)`` gives its incremental :class:`~genloom.core.state.State`;
  ``patterns`` lists the attention patterns it can serve.
- :class:`Head` -- ``embed(ids)``; ``forward(h)`` gives the outputs (logits); ``loss(outputs,
  targets, mask)``; ``sample(logits, generator)``.
- :class:`Objective` -- ``pattern`` it needs; ``loss(model, batch) -> dict(loss=..., ...)``.
- decoders live in :mod:`genloom.core.generation`, kernels in :mod:`genloom.core.kernels`.

:func:`assemble` builds a :class:`GenerativeModel` from a validated config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from genloom.core.context import BIND_ORDER, BUILD_ORDER, BuildContext
from genloom.core.errors import ConfigError, PluginError
from genloom.core.pattern import CAUSAL, AttentionPattern


class Tokenizer:
    """Maps data to token ids and back. Subclass; may also be an ``nn.Module`` (trainable)."""

    vocab_size: int
    eos_id: int | None = None

    def encode(self, data) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> Any:
        raise NotImplementedError

    def save(self, directory) -> None:
        """Write what is needed to rebuild the tokenizer (e.g. a trained BPE) into ``directory``."""

    def load(self, directory) -> None:
        """Read back what :meth:`save` wrote."""


class Backbone(nn.Module):
    """A sequence mixer on hidden states with an incremental state."""

    patterns: frozenset = frozenset({"causal"})

    static_cache: bool = False
    """True when ``init_state`` gives the core KVCache and the forward reaches it only through
    ``begin``/``update`` (so a StaticKVCache can stand in and a one-token step can be compiled:
    ``generate(cache="static", compile=True)``, see :mod:`genloom.core.static_decode`)."""

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = CAUSAL, state=None, valid=None) -> torch.Tensor:
        raise NotImplementedError

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        raise NotImplementedError

    def supports(self, pattern: AttentionPattern) -> bool:
        return pattern.kind in self.patterns or "any" in self.patterns


class Head(nn.Module):
    """Bridge between token space and hidden space; owns the per-token distribution."""

    decoded_by: tuple[type, ...] = ()
    """The decoder classes that can decode this head (their subclasses too), for a head whose
    ``forward`` is not next-token logits over the vocabulary (action kinds, insertion slots...);
    generation refuses any other decoder with a message naming these. Empty: any decoder."""

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def token_nll(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token negative log-likelihood, shaped like ``targets``."""
        per = nn.functional.cross_entropy(outputs.float().flatten(0, -2), targets.flatten(), reduction="none")
        return per.view(targets.shape)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean NLL over ``mask``ed positions; ``weight`` (like targets) scales each token's term (ELBO weights)."""
        per = self.token_nll(outputs, targets)
        if weight is not None:
            per = per * weight
        if mask is None:
            return per.mean()
        mask = mask.to(per.dtype)
        return (per * mask).sum() / mask.sum().clamp_min(1.0)

    def sample(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one token per row of ``logits`` (..., V)."""
        probs = torch.softmax(logits.float(), dim=-1)
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


class Objective(nn.Module):
    """A training paradigm: arranges/corrupts the batch, picks the pattern and scored positions."""

    pattern: AttentionPattern = CAUSAL

    def loss(self, model: "GenerativeModel", batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def metrics(self, out: dict[str, torch.Tensor], batch: dict) -> dict[str, float]:
        """Extra per-batch metrics from :meth:`loss`'s output (defaults to none)."""
        return {}


class GenerativeModel(nn.Module):
    """tokenizer + head + backbone + objective, assembled from a config."""

    def __init__(self, tokenizer, head: Head, backbone: Backbone, objective: Objective | None, ctx: BuildContext, decoder_spec=None, config=None):
        super().__init__()
        self.tokenizer = tokenizer
        self.head = head
        self.backbone = backbone
        self.objective = objective
        self.ctx = ctx
        self.decoder_spec = decoder_spec
        self.config = config  # the ValidatedConfig it was built from

    def hidden(self, ids: torch.Tensor, *, pattern: AttentionPattern | None = None, state=None, valid=None) -> torch.Tensor:
        from genloom.core import kernels

        pattern = pattern or (self.objective.pattern if self.objective is not None else CAUSAL)
        with kernels.scope(getattr(self.ctx, "kernels", None)):  # the config's kernel pins apply to this model only
            return self.backbone(self.head.embed(ids), pattern=pattern, state=state, valid=valid)

    def forward(self, ids: torch.Tensor, *, pattern: AttentionPattern | None = None, state=None, valid=None) -> torch.Tensor:
        """Outputs (logits) for ``ids``; with ``state``, ``ids`` continue the state and advance it."""
        return self.head(self.hidden(ids, pattern=pattern, state=state, valid=valid))

    def init_state(self, batch_size: int, capacity: int = 256):
        p = next(self.parameters(), None)
        device = p.device if p is not None else None
        dtype = p.dtype if p is not None else None
        return self.backbone.init_state(batch_size, capacity, device=device, dtype=dtype)

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        if self.objective is None:
            raise ConfigError("the model has no objective to train with", path="objective")
        return self.objective.loss(self, batch)


@dataclass
class Built:
    """Everything :func:`assemble` built."""

    model: GenerativeModel
    ctx: BuildContext
    data: Any = None
    decoder: Any = None
    processors: list = field(default_factory=list)
    declared: dict[str, Any] = field(default_factory=dict)
    """The built nodes of plugin-declared kinds, by top-level config key (also ``ctx.<key>``)."""


def declared_specs(validated) -> dict[str, Any]:
    """The validated top-level nodes of plugin-declared kinds (``ComponentKind.config_key``), in config order:
    a :class:`~genloom.core.config.ComponentSpec`, or a list of them for a ``many`` kind."""
    from genloom.core.config import COMPONENT_KEYS, LIST_KEYS

    out: dict[str, Any] = {k: s for k, s in validated.components.items() if k not in COMPONENT_KEYS}
    out.update({k: specs for k, specs in validated.lists.items() if k not in LIST_KEYS})
    return out


def _bind_spec(spec, ctx: BuildContext) -> None:
    if hasattr(spec.config, "bind"):
        ctx.current = spec.path
        try:
            spec.config.bind(ctx)
        except (ValueError, TypeError) as exc:  # a value that contradicts what the context publishes
            raise ConfigError(str(exc), path=spec.path) from None


def bind(validated, ctx: BuildContext) -> None:
    """Run every config's ``bind(ctx)`` in BIND_ORDER; the declared kinds' nodes bind right after the tokenizer."""
    for key in BIND_ORDER:
        spec = validated.components.get(key)
        if spec is not None:
            _bind_spec(spec, ctx)
        if key == "tokenizer":
            for node in declared_specs(validated).values():
                for one in node if isinstance(node, list) else [node]:
                    _bind_spec(one, ctx)
    ctx.current = None


def build_declared(validated, ctx: BuildContext) -> dict[str, Any]:
    """Build the declared kinds' top-level nodes and publish each as ``ctx.<config_key>``."""
    built: dict[str, Any] = {}
    for key, node in declared_specs(validated).items():
        built[key] = [build_component(s, ctx) for s in node] if isinstance(node, list) else build_component(node, ctx)
        ctx.set(key, built[key], by=key)
    return built


def build_component(spec, ctx: BuildContext):
    ctx.current = spec.path
    try:
        factory = spec.record.load_factory()
    except PluginError as exc:
        raise ConfigError(str(exc), path=spec.path) from exc
    except Exception as exc:
        raise ConfigError(f"could not import {spec.record.kind} '{spec.record.name}' from plugin '{spec.record.plugin}' ({spec.record.distribution} {spec.record.version}): {type(exc).__name__}: {exc}", path=spec.path) from exc
    try:
        obj = factory(spec.config, ctx)
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        raise ConfigError(f"building {spec.record.kind} '{spec.record.name}' needs more memory than is available "
                          f"({str(exc).splitlines()[0][:200]}); check its sizes", path=spec.path) from None
    ctx.current = None
    return obj


def _out_of_memory(exc: BaseException) -> bool:
    """An allocation failure (a size in the config far too large), as opposed to a bug."""
    text = str(exc)
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower()


def assemble(validated, registry=None, *, data: bool = True, tokenizer=None, fit_tokenizer: bool = True) -> Built:
    """Build data, tokenizer, head, backbone, objective and decoder from a validated config."""
    from genloom.core.plugins import get_registry

    registry = registry or get_registry()
    ctx = BuildContext(registry, kernels=validated.run.kernels)
    comps = validated.components
    for key in ("tokenizer", "head", "backbone"):
        if key not in comps:
            allowed = ", ".join(registry.names({"tokenizer": "tokenizer", "head": "head", "backbone": "backbone"}[key]))
            raise ConfigError(f"the config has no '{key}' node (allowed names: {allowed})", path=key)
    source = None
    if data and "data" in comps:
        source = build_component(comps["data"], ctx)
        for k, v in getattr(source, "info", {}).items():
            ctx.setdefault(k, v)
    built_tok = tokenizer
    if built_tok is None:
        built_tok = build_component(comps["tokenizer"], ctx)
        if fit_tokenizer and source is not None and hasattr(built_tok, "fit"):
            built_tok.fit(source, ctx)
    ctx.set("vocab_size", built_tok.vocab_size, by="tokenizer")
    if getattr(built_tok, "eos_id", None) is not None:
        ctx.setdefault("eos_id", built_tok.eos_id)
    ctx.set("tokenizer", built_tok, by="tokenizer")
    bind(validated, ctx)
    declared = build_declared(validated, ctx)
    parts = {"tokenizer": built_tok}
    for key in BUILD_ORDER[1:]:
        if key in comps:
            parts[key] = build_component(comps[key], ctx)
    backbone, objective = parts["backbone"], parts.get("objective")
    if objective is not None and hasattr(backbone, "supports") and not backbone.supports(objective.pattern):
        raise ConfigError(
            f"backbone '{comps['backbone'].record.name}' cannot serve the '{objective.pattern.kind}' attention pattern that objective "
            f"'{comps['objective'].record.name}' needs (it supports: {', '.join(sorted(backbone.patterns))})",
            path="objective",
        )
    model = GenerativeModel(built_tok, parts["head"], backbone, objective, ctx, comps.get("decoder"), validated)
    processors = [build_component(spec, ctx) for spec in validated.lists.get("processors", [])]
    return Built(model=model, ctx=ctx, data=source, decoder=parts.get("decoder"), processors=processors, declared=declared)
