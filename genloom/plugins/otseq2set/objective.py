"""The OTSeq2Set objective: student forcing, a bipartite-matching loss and an optimal-transport term.

One training step on a batch of (source, label set) pairs (``SourceTargetPairs``; the target's
order carries no meaning):

1. student forcing: decode greedily from the source, without gradients, for ``n + 1`` steps (the
   largest set in the batch, plus end-of-sequence), with the model's own predictions as inputs;
2. one forward pass with gradients over ``[source block | own predictions]`` under the prefix
   pattern gives the distributions ``p_1 .. p_{n+1}``;
3. for each row with labels ``l_1 .. l_k``: the cost ``C[i, j] = -log p_i(l_j)`` (i, j <= k), the
   Hungarian assignment ``sigma`` minimising it, the matching loss ``sum_i C[i, sigma(i)]`` and the
   end-of-sequence term ``-log p_{k+1}(eos)``;
4. the optimal-transport term: Sinkhorn transport between the predictions' expected label
   embeddings ``e_i = sum_v p_i(v) E_v`` and the labels' embeddings ``E_{l_j}`` (the head's
   embedding matrix), cost ``1 - cos(e_i, E_{l_j})``, weighted by ``ot_weight``.

The loss is the sum over rows divided by the scored positions (``k + 1`` per row).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genloom.core.errors import ConfigError
from genloom.core.model import Objective
from genloom.core.pattern import prefix

from .matching import hungarian, sinkhorn_distance, sinkhorn_distances


def student_forcing_inputs(model, source: torch.Tensor, steps: int, pattern) -> torch.Tensor:
    """(B, steps - 1) greedy predictions from the source block (no gradients), fed back as inputs."""
    with torch.no_grad():
        state = model.init_state(source.shape[0], source.shape[1] + steps)
        logits = model(source, pattern=pattern, state=state)[:, -1]
        out = []
        for _ in range(steps - 1):
            token = logits.argmax(-1, keepdim=True)
            out.append(token)
            logits = model(token, pattern=pattern, state=state)[:, -1]
    return torch.cat(out, 1) if out else source.new_zeros(source.shape[0], 0)


def set_loss(logits: torch.Tensor, labels: torch.Tensor, eos_id: int, embeddings: torch.Tensor | None, ot_weight: float, epsilon: float) -> dict[str, torch.Tensor]:
    """One row: ``logits`` (>= k+1, V) and its ``labels`` (k,): matching, end-of-sequence and OT terms."""
    k = labels.shape[0]
    log_probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
    cost = -log_probs[:k][:, labels]  # (k, k): predicted position i against label j
    if k:
        rows, cols = hungarian(cost)
        match = cost[rows, cols].sum()
    else:
        match = cost.sum()
    eos = -log_probs[k, eos_id]
    ot = log_probs.new_zeros(())
    if ot_weight and k and embeddings is not None:
        expected = log_probs[:k].exp() @ embeddings.to(log_probs.dtype)  # (k, D)
        distance = 1 - F.cosine_similarity(expected[:, None], embeddings[labels].to(expected.dtype)[None], dim=-1)
        ot = sinkhorn_distance(distance, epsilon)
    return {"match": match, "eos": eos, "ot": ot}


class OTSeq2Set(Objective):
    def __init__(self, source_length: int, eos_id: int, ot_weight: float, epsilon: float):
        super().__init__()
        self.source_length, self.eos_id = source_length, eos_id
        self.ot_weight, self.epsilon = ot_weight, epsilon
        self.pattern = prefix(source_length)

    def loss(self, model, batch):
        ids, S = batch["ids"], self.source_length
        sizes = batch["mask"].sum(1) - 1  # labels per row (the target without its end-of-sequence id)
        steps = int(sizes.max()) + 1
        source = ids[:, :S]
        own = student_forcing_inputs(model, source, steps, self.pattern)
        logits = model(torch.cat([source, own], 1), pattern=self.pattern)[:, S - 1 :]  # (B, steps, V)
        B, V = ids.shape[0], logits.shape[-1]
        K = steps - 1
        log_probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
        labels = ids[:, S : S + K]  # (B, K); row b's labels are its first sizes[b]
        cost = -log_probs[:, :K].gather(-1, labels[:, None, :].expand(B, K, K))  # cost[b, i, j] = -log p_i(l_j)
        match = log_probs.new_zeros(())
        exact = 0
        for b in range(B):
            k = int(sizes[b])
            if k:
                rows, cols = hungarian(cost[b, :k, :k])
                match = match + cost[b, rows, cols].sum()
            predicted = logits[b, : k + 1].argmax(-1).tolist()
            exact += int(sorted(predicted[:k]) == sorted(labels[b, :k].tolist()) and predicted[k] == self.eos_id)
        eos = -log_probs[torch.arange(B), sizes, self.eos_id].sum()
        ot = log_probs.new_zeros(B)
        if self.ot_weight and K:
            embeddings = model.head.embed(torch.arange(V, device=ids.device)).to(log_probs.dtype)
            expected = log_probs[:, :K].exp() @ embeddings  # (B, K, D)
            distance = 1 - F.cosine_similarity(expected[:, :, None], embeddings[labels][:, None], dim=-1)
            ot = sinkhorn_distances(distance, sizes, self.epsilon)
        totals = {"match": match, "eos": eos, "ot": ot.sum()}
        positions = (sizes + 1).sum().float()
        nll = totals["match"] + totals["eos"]
        loss = (nll + self.ot_weight * totals["ot"]) / positions
        return {"loss": loss, "ot": (totals["ot"] / B).detach(),
                "set_exact_match": torch.tensor(exact / ids.shape[0]), "_nats": nll.detach(), "_tokens": positions}


def build(config, ctx):
    source_length = ctx.get("source_length")
    if not source_length:
        raise ConfigError("otseq2set needs source-conditioned data (a data set that publishes source_length, e.g. 'seq2seq' with task: letter-set)", path="objective")
    eos = ctx.get("eos_id")
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    return OTSeq2Set(int(source_length), int(eos if eos is not None else 0), config.ot_weight, config.epsilon)
