"""Farzi Data: autoregressive data distillation (Sachdeva et al., ICLR 2024).

What the paper does: summarise a data set of event (token) sequences into a few synthetic
sequences -- Farzi Data -- such that a model trained on them performs like one trained on the full
data. The synthetic data are factorised through a latent space: ``softmax(latent x shared token
basis)``, each row a distribution over the tokens (on the simplex), with far fewer parameters than
sequences x vocabulary. Distillation is bi-level: an inner loop trains a learner with Adam on the
synthetic data; the outer loss is the learner's loss on real data, and its gradient with respect to
the latent factors (the meta-gradient) flows back through the inner Adam steps. Farzi derives
reverse-mode differentiation of Adam with Hessian-vector products, walking the steps backwards and
reconstructing the trajectory, so memory does not grow with the number of inner steps.

What this implementation does:

- ``adam.py``: functional Adam (PyTorch's update, bias-corrected), the unrolled reference with the
  whole loop in the autograd graph, and ``adam_reverse`` -- the reverse mode that reconstructs
  ``θ_{t-1}, m_{t-1}, v_{t-1}`` from step t, recomputes the gradient there and propagates the adjoints
  with one Hessian-vector product per step (``∇θ (g · ḡ)``) and the mixed derivative ``∇X (g · ḡ)``
  that makes the meta-gradient;
- ``summary.py``: ``FarziSummary`` (``softmax(latent @ basis)``) and the inner learner, an order-p
  linear autoregression over (soft) one-hot tokens with a soft next-token cross-entropy;
- objective ``farzi``: owns the summary; on each batch of real sequences it trains a fresh
  learner (new initialisation per call) for ``inner_steps`` Adam steps on the summary and returns
  the learner's cross-entropy on the batch; ``backward`` runs ``adam_reverse`` (a custom autograd
  function), so ``genloom train`` optimises the summary with its usual optimizer. ``genloom
  generate`` on a farzi run writes the distilled sequences (the most likely token of each row,
  decoded by the run's tokenizer) and their probabilities.

What it simplifies: the inner learner is a linear autoregression (the paper distils for SASRec and
transformer LMs); no trajectory-matching warm start; the config's head and backbone are the
model contract's required components and take no part in distillation (the objective owns the
summary and the inner learner). Evaluation is not the forecasting harness: the figure is the
real-data cross-entropy of a learner trained on the summary against one trained on as many random
real sequences and one trained on 1024 random real sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveFloat, PositiveInt, Seed

PAPER = records.Paper(
    title="Farzi Data: Autoregressive Data Distillation",
    year=2024,
    arxiv="2310.09983",
)

_P = "genloom.plugins.farzi"


@dataclass
class FarziObjectiveConfig:
    """Distil the training sequences into ``n_synthetic`` soft sequences by meta-gradients through Adam."""

    n_synthetic: PositiveInt = 8
    """Synthetic sequences in the summary."""
    length: PositiveInt | None = None
    """Tokens per synthetic sequence (None: the data set's seq_len + 1)."""
    rank: PositiveInt = 16
    """Dimension of the latent space shared by every position (basis: rank x vocabulary)."""
    order: PositiveInt = 1
    """Tokens the inner learner (a linear autoregression) conditions on."""
    inner_steps: PositiveInt = 10
    """Adam steps of the inner learner on the summary per outer step."""
    inner_lr: PositiveFloat = 0.05
    """Learning rate of those steps."""
    seed: Seed = 0
    """Seed of the summary's initialisation and of the inner learner's initialisations."""

    def bind(self, ctx) -> None:
        if self.length is None:
            self.length = ctx.seq_len + 1


@hookimpl
def genloom_objectives():
    return [records.objective("farzi", f"{_P}.objective:build", FarziObjectiveConfig,
                              "Farzi: distil token sequences into a latent-factorised soft summary by reverse-mode meta-gradients through Adam.", PAPER)]
