"""On the Power of Decision Trees in Auto-Regressive Language Modeling (Gan et al., 2024).

What the paper does. An auto-regressive decision tree (ARDT) predicts the next token from the
previous k tokens with a decision tree, and generates by feeding its own predictions back. The
paper proves that ARDTs with chain-of-thought tokens can simulate finite automata (and Turing
machines and sparse circuits) with small trees: writing the automaton's state after each input
symbol as an intermediate token, each next state depends only on the previous state token and one
input token at a fixed distance, a function a small tree represents exactly. Empirically ARDTs
trained on simple language data generate coherent text and can sit on top of Transformer features.

What this implementation does. :mod:`.automata` generates chain-of-thought traces of a finite
automaton over fixed-length input strings: ``x_1 .. x_n = q_1 .. q_n`` with
``q_i = delta(q_{i-1}, x_i)``. The backbone ``ardt`` (:mod:`.model`) fits a scikit-learn
``DecisionTreeClassifier`` on those traces when it is built (the window of the previous ``window``
token ids as features, the next token as target; only chain-of-thought positions are targets) and
predicts next-token distributions for any sequence; ``ardt-onehot`` is its head (one-hot
embeddings of the ids in, log of the tree's probabilities out), since a tree reads token ids, not
learned embeddings. The state keeps each row's last ``window`` ids (a replayable
:class:`~genloom.toolkit.recurrent.RecurrentState`), so the core's decoding loop and its decoders
run on it, and greedy rollout continues a prompt ``x_1 .. x_n =`` with the automaton's states.

What it simplifies. The tree is fitted once at build time from synthetic traces (not by the
Lightning loop: a tree has no gradients; ``genloom train`` has nothing to optimise and is not the
way to use it); features are raw token ids of a fixed window, not Transformer features; automata
are small tables (parity, a mod-3 counter, a 3-state "ab*" detector).
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records

PAPER = records.Paper(title="On the Power of Decision Trees in Auto-Regressive Language Modeling", year=2024, arxiv="2409.19150")

AUTOMATA = ("parity", "mod3", "ab-star")


@dataclass
class ARDTConfig:
    """A decision-tree next-token predictor fitted on automaton chain-of-thought traces."""

    automaton: str = "parity"
    """The automaton whose traces the tree is fitted on: parity, mod3 or ab-star."""
    input_length: int = 12
    """n, the length of every input string (the state q_i sits n + 1 tokens after x_i)."""
    window: int | None = None
    """Previous tokens the tree reads (None: input_length + 2, enough to see x_i and q_{i-1})."""
    train_strings: int = 400
    """Random input strings whose traces the tree is fitted on."""
    max_depth: int | None = None
    """Tree depth limit (None: grow until the training traces are fitted)."""
    seed: int = 0
    """Seed of the training strings and the tree."""

    def __post_init__(self):
        if self.automaton not in AUTOMATA:
            raise ValueError(f"automaton must be one of {', '.join(AUTOMATA)}, got '{self.automaton}'")
        for name in ("input_length", "train_strings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be at least 1 (or null), got {self.window}")
        if self.max_depth is not None and self.max_depth < 1:
            raise ValueError(f"max_depth must be at least 1 (or null), got {self.max_depth}")

    @property
    def resolved_window(self) -> int:
        return self.window if self.window is not None else self.input_length + 2

    def bind(self, ctx):
        from genloom.plugins.ardt.automata import vocabulary_size

        size = vocabulary_size(self.automaton)
        vocab = ctx.get("vocab_size")
        if vocab is not None and vocab != size:
            raise ValueError(f"the {self.automaton} automaton's traces use {size} token ids; set tokenizer.vocab_size to {size} (got {vocab})")
        ctx.set("d_model", size)


@dataclass
class OneHotHeadConfig:
    """One-hot embeddings of token ids; logits are the log of the backbone's probabilities."""

    floor: float = 1e-6
    """Probabilities are clamped to at least this before the log (a tree gives exact zeros)."""

    def __post_init__(self):
        if not 0 < self.floor < 1:
            raise ValueError(f"floor must be in (0, 1), got {self.floor}")


@hookimpl
def genloom_backbones():
    return [records.backbone("ardt", "genloom.plugins.ardt.model:build", ARDTConfig, "Auto-regressive decision tree (scikit-learn) over a window of previous tokens, fitted on automaton CoT traces.", PAPER)]


@hookimpl
def genloom_heads():
    return [records.head("ardt-onehot", "genloom.plugins.ardt.model:build_head", OneHotHeadConfig, "One-hot id embeddings in, log-probabilities of a probability-valued backbone out (for ardt).", PAPER)]
