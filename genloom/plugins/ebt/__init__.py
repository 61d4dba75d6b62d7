"""Energy-Based Transformers: Cognitively Inspired Energy-Based World Models (Gladstone et al., 2024).

What the paper does. Instead of emitting the next element in one forward pass, an energy-based
world model (EBWM) learns an energy ``E(context, candidate)`` of how compatible a predicted next
state is with the context, and *predicts by optimisation*: it starts from an initial guess and
descends the energy's gradient, ``y_{k+1} = y_k - alpha grad_y E(c, y_k)``. This lets predictions
influence internal computation, gives a plausibility score (the energy) for every prediction,
and lets the model spend more or fewer steps depending on when the energy stops improving
(System-2-like thinking). The Energy-Based Transformer (EBT) is a causal transformer built for
this; training backpropagates the loss of the final prediction through the unrolled
optimisation, which needs second-order gradients (the gradient of a gradient step).

What this implementation does. The context encoder is the baseline ``transformer`` backbone
(any backbone works); the contribution lives in the ``ebt`` head (:mod:`.head`): candidates are
next-token logits ``y`` (B, L, V); the energy is an MLP of the context state and the candidate's
expected embedding ``softmax(y) W``; a prediction starts at ``y_0 = 0`` (uniform) and takes
``steps`` gradient steps of learnable size ``alpha`` (``create_graph`` in training, so the loss
reaches the energy's parameters through the steps). In evaluation mode, with
``energy_threshold`` set, it stops as soon as the energy improves by less than the threshold
(adaptive compute), up to ``max_steps``. The ``next-token`` objective trains it (cross-entropy of
the final logits) and every decoder samples from the final logits.

What it simplifies. Discrete next-token candidates as logits (no continuous frame prediction, no
Langevin noise or replay buffer of the paper's training tricks); the energy is an MLP on top of
a standard causal transformer rather than the paper's EBT attention variant that attends from
candidate tokens; tiny widths.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records

PAPER = records.Paper(title="Cognitively Inspired Energy-Based World Models", year=2024, arxiv="2406.08862")


@dataclass
class EBTHeadConfig:
    """Next-token prediction by gradient descent on a learned energy."""

    steps: int = 3
    """Gradient steps per prediction in training (and in evaluation without a threshold)."""
    step_size: float = 1.0
    """Initial value of the learnable step size alpha."""
    energy_hidden: int = 64
    """Hidden width of the energy MLP."""
    energy_threshold: float | None = None
    """Evaluation only: stop when the mean energy improves by less than this (adaptive steps)."""
    max_steps: int = 16
    """Evaluation only: most steps when ``energy_threshold`` is set."""
    init_std: float = 0.02
    """Standard deviation of the embedding initialisation."""

    def __post_init__(self):
        for name in ("steps", "energy_hidden", "max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        if self.energy_threshold is not None and self.energy_threshold < 0:
            raise ValueError(f"energy_threshold must be >= 0 (or null), got {self.energy_threshold}")


@hookimpl
def genloom_heads():
    return [records.head("ebt", "genloom.plugins.ebt.head:build", EBTHeadConfig, "Energy-based prediction: next-token logits by gradient descent on a learned energy, adaptive steps.", PAPER)]
