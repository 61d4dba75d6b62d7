"""``genloom new-plugin NAME``: a pip-installable plugin package that passes its own tests."""

from __future__ import annotations

import re
from pathlib import Path

from genloom.core.errors import ConfigError

PYPROJECT = '''[build-system]
requires = ["setuptools>=70.1"]
build-backend = "setuptools.build_meta"

[project]
name = "genloom-{name}"
version = "0.1.0"
description = "genloom plugin: {name}"
requires-python = ">=3.10"
dependencies = ["genloom"]

[project.entry-points.genloom]
{name} = "{pkg}"

[tool.setuptools]
packages = ["{pkg}"]
'''

INIT = '''"""genloom plugin `{name}`.

What the paper does, what this implementation does and what it simplifies at toy scale.
The hook implementations and config dataclasses live here; this module imports no torch.
"""

from dataclasses import dataclass

from genloom.core import hookimpl, records

PAPER = records.Paper(title="{title}", year=None, arxiv=None)


@dataclass
class {cls}BackboneConfig:
    """A gated causal convolution mixer (replace with your technique)."""

    d_model: int = 32
    """Model width, published to later components as ctx.d_model."""
    kernel_size: int = 3
    """Width of the causal depthwise convolution."""

    def __post_init__(self):
        if self.kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {{self.kernel_size}}")

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


@dataclass
class {cls}DecoderConfig:
    """Sample from the top-k tokens only."""

    k: int = 5


@hookimpl
def genloom_backbones():
    return [records.backbone("{name}-conv", "{pkg}.model:build_backbone", {cls}BackboneConfig, "Gated causal convolution backbone.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("{name}-topk", "{pkg}.model:build_decoder", {cls}DecoderConfig, "Top-k sampling decoder.", PAPER)]
'''

MODEL = '''"""The torch side of `{name}`: imported only when a component is built."""

import torch
from torch import nn

from genloom.core.generation import Decoder
from genloom.core.model import Backbone
from genloom.core.state import State, as_lengths


class ConvState(State):
    """The last kernel_size - 1 inputs of every sequence, with a history of (window, lengths) for rollback."""

    def __init__(self, batch_size, d_model, kernel_size, device=None, dtype=None):
        self.window = torch.zeros(batch_size, kernel_size - 1, d_model, device=device, dtype=dtype)
        self._lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.history = [(self.window, self._lengths)]

    @property
    def lengths(self):
        return self._lengths

    def reorder(self, index):
        self.window = self.window.index_select(0, index)
        self._lengths = self._lengths.index_select(0, index)
        self.history = [(w.index_select(0, index), n.index_select(0, index)) for w, n in self.history]

    def rollback(self, lengths):
        lengths = as_lengths(lengths, self.window.shape[0], self.window.device)
        rows = []
        for b, target in enumerate(lengths.tolist()):
            # the latest kept window of row b after exactly `target` tokens
            found = [w[b] for w, n in reversed(self.history) if int(n[b]) == target]
            if not found:
                raise ValueError(f"row {{b}} cannot roll back to {{target}} tokens: only the last advance is kept")
            rows.append(found[0])
        self.window = torch.stack(rows)
        self._lengths = lengths.clone()
        self.history = [(self.window, self._lengths)]

    def snapshot(self):
        return (self.window.clone(), self._lengths.clone())

    def restore(self, snap):
        self.window, self._lengths = snap[0].clone(), snap[1].clone()
        self.history = [(self.window, self._lengths)]


class ConvBackbone(Backbone):
    patterns = frozenset({{"causal"}})

    def __init__(self, cfg):
        super().__init__()
        self.k = cfg.kernel_size
        self.weight = nn.Parameter(torch.randn(cfg.d_model, cfg.kernel_size) * 0.2)
        self.gate = nn.Linear(cfg.d_model, cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, h, *, pattern=None, state=None, valid=None):
        B, L, D = h.shape
        window = state.window if state is not None else h.new_zeros(B, self.k - 1, D)
        lengths = state.lengths if state is not None else torch.zeros(B, dtype=torch.long, device=h.device)
        keep = torch.ones(B, L, dtype=torch.bool, device=h.device) if valid is None else valid.to(h.device, torch.bool)
        history, mixed = [], []
        for t in range(L):
            full = torch.cat([window, h[:, t : t + 1]], 1)  # (B, k, D): the causal window ending at t
            mixed.append((full.transpose(1, 2) * self.weight).sum(-1))
            # a padding token (valid False) neither enters the window nor counts as a token
            window = torch.where(keep[:, t, None, None], full[:, 1:], window)
            lengths = lengths + keep[:, t].long()
            history.append((window, lengths))
        y = torch.stack(mixed, 1) * torch.sigmoid(self.gate(h))
        if state is not None:
            state.history = [(state.window, state.lengths)] + history
            state.window, state._lengths = window, lengths
        return h + self.out(y)

    def init_state(self, batch_size, capacity=256, device=None, dtype=None):
        return ConvState(batch_size, self.weight.shape[0], self.k, device, dtype or self.weight.dtype)


class TopK(Decoder):
    def choose(self, session, logits):
        top = logits.topk(min(self.config.k, logits.shape[-1]), -1)
        pick = session.model.head.sample(top.values, session.generator)
        return top.indices.gather(-1, pick[:, None])[:, 0]


def build_backbone(config, ctx):
    return ConvBackbone(config)


def build_decoder(config, ctx):
    return TopK(config, ctx)
'''

TESTS = '''"""The conformance kit on this plugin's components."""

from genloom.testing import check_backbone, check_decoder, tiny_model


def test_backbone_contract():
    check_backbone({{"name": "{name}-conv", "d_model": 16}})


def test_decoder_contract():
    built = tiny_model(base={{
        "tokenizer": {{"name": "bytes"}},
        "head": {{"name": "lm"}},
        "backbone": {{"name": "{name}-conv", "d_model": 16}},
        "objective": {{"name": "next-token"}},
    }})
    check_decoder(built, {{"name": "{name}-topk", "k": 3}})
'''


def new_plugin(name: str, directory=".") -> Path:
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
        raise ConfigError(f"plugin name '{name}' must be lower-case letters, digits and dashes, starting with a letter")
    pkg = "genloom_" + name.replace("-", "_")
    cls = "".join(p.capitalize() for p in name.split("-"))
    root = Path(directory) / f"genloom-{name}"
    if root.exists():
        raise ConfigError(f"'{root}' already exists; choose another name or folder")
    (root / pkg).mkdir(parents=True)
    (root / "tests").mkdir()
    fmt = dict(name=name, pkg=pkg, cls=cls, title=name.replace("-", " ").title())
    (root / "pyproject.toml").write_text(PYPROJECT.format(**fmt))
    (root / pkg / "__init__.py").write_text(INIT.format(**fmt))
    (root / pkg / "model.py").write_text(MODEL.format(**fmt))
    (root / "tests" / "test_conformance.py").write_text(TESTS.format(**fmt))
    (root / "README.md").write_text(f"# genloom-{name}\n\nA genloom plugin. `pip install -e .` then `pytest`.\n")
    return root
