"""The joint SynerGen objective: InfoNCE next-item retrieval + pointwise/pairwise ranking.

For a batch of windows ``ids`` (B, L + 1) with ``times`` (B, L + 1): hidden states
h = backbone(embed(ids[:, :-1]), times=times[:, :-1], query_times=times[:, 1:]) (the query of
position t turns with the time of the event it predicts; ``query_at_next_time=false``: its own) give N = B * L queries q_n, with next items y_n and
item vectors e = embed(item). Then

    InfoNCE   = mean_n CE(S[n], n),  S[n, m] = cos(q_n, e_{y_m}) / temperature   (in-batch negatives)
    pointwise = mean_n [ -log sigmoid(s_n+) - mean_k log(1 - sigmoid(s_nk-)) ]
    pairwise  = mean_{n,k} -log sigmoid(s_n+ - s_nk-)                         (BPR)

with s = q . e (dot product) and ``num_negatives`` uniform negative items per query. The loss output
also reports ``hit@10``: the share of queries whose next item ranks in the top 10 of all items by s.

``genloom generate RUN`` asks the objective for ``generate_samples`` (the hook image tokenizers and
forecasters use to own generation; the token decoders have no way to pass timestamps): it writes
next-item recommendations for held-out windows, each ranked from the events before the next one and
the time at which it is asked (the next event's timestamp), never from the next item itself.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch.nn import functional as F

from genloom.core.model import Objective


def info_nce(queries: torch.Tensor, items: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of each query against all N item vectors of the batch (its own is the label)."""
    sim = F.normalize(queries, dim=-1) @ F.normalize(items, dim=-1).T / temperature
    return F.cross_entropy(sim, torch.arange(len(queries), device=queries.device))


def ranking_losses(queries, positives, negatives):
    """Pointwise BCE and pairwise BPR for (N, D) queries, (N, D) positives and (N, K, D) negatives."""
    pos = (queries * positives).sum(-1)
    neg = torch.einsum("nd,nkd->nk", queries, negatives)
    pointwise = (F.softplus(-pos) + F.softplus(neg).mean(-1)).mean()
    pairwise = F.softplus(neg - pos[:, None]).mean()
    return pointwise, pairwise


class SynergenObjective(Objective):
    def __init__(self, config, ctx):
        super().__init__()
        self.config = config
        self.n_items = ctx.get("vocab_size", None)

    def queries(self, model, batch):
        ids = batch["ids"]
        times = batch.get("times")
        h = model.head.embed(ids[:, :-1])
        if times is None:
            return model.backbone(h)
        return model.backbone(h, times=times[:, :-1], query_times=times[:, 1:] if self.config.query_at_next_time else None)

    def loss(self, model, batch):
        c = self.config
        ids = batch["ids"]
        h = self.queries(model, batch)
        q = h.reshape(-1, h.shape[-1])
        targets = ids[:, 1:].reshape(-1)
        items = model.head.embed(targets)
        retrieval = info_nce(q, items, c.temperature)
        n_items = self.n_items or int(ids.max()) + 1
        negative_ids = torch.randint(0, n_items, (len(targets), c.num_negatives), device=ids.device)
        pointwise, pairwise = ranking_losses(q, items, model.head.embed(negative_ids))
        loss = c.retrieval_weight * retrieval + c.pointwise_weight * pointwise + c.pairwise_weight * pairwise
        with torch.no_grad():  # ranking all items by the score q . e: is the next item in the top 10?
            scores = q @ model.head.embed(torch.arange(n_items, device=ids.device)).T
            hit = (scores > scores.gather(1, targets[:, None])).sum(1) < 10
        return {"loss": loss, "retrieval": retrieval.detach(), "pointwise": pointwise.detach(), "pairwise": pairwise.detach(),
                "hit@10": hit.double().mean()}

    def recommend(self, model, ids, times, top: int = 10):
        """Top ``top`` items (and scores) after events ``ids``/``times`` (B, L), asked at ``times`` of event L (B, L + 1).

        Only the first L items are read; ``times[:, L]`` is when the recommendation is asked.
        """
        n_items = self.n_items or int(ids.max()) + 1
        batch = {"ids": torch.cat([ids, torch.zeros_like(ids[:, :1])], 1), "times": times}
        query = self.queries(model, batch)[:, -1]
        scores = query @ model.head.embed(torch.arange(n_items, device=ids.device)).T
        return scores, torch.topk(scores, min(top, n_items), dim=-1)

    def generate_samples(self, gen, *, n: int = 1, seed=None, out=None, decoder=None) -> Path:
        """``genloom generate RUN``: recommendations for the first ``n`` test windows of the run's data set, as CSV.

        One row per window: the true next item, its rank among all items (0 = first), the top 10
        items and their scores. ``seed`` is unused (the ranking is deterministic).
        """
        from genloom.core.model import build_component

        spec = gen.model.config.components.get("data") if gen.model.config is not None else None
        if spec is None:
            raise ValueError("the run's config has no data node; synergen recommends for its own held-out windows")
        windows = build_component(spec, gen.ctx).load("test")
        rows = [windows[i] for i in range(min(n, len(windows)))]
        ids = torch.stack([r["ids"] for r in rows])
        parameter = next(gen.model.parameters())
        times = torch.stack([r["times"] for r in rows]).to(parameter.dtype)
        gen.model.eval()
        with torch.no_grad():
            scores, (top_scores, top_items) = self.recommend(gen.model, ids[:, :-1], times)
        truth = ids[:, -1]
        ranks = (scores > scores.gather(1, truth[:, None])).sum(1)
        path = Path(out) if out else Path(gen.run_dir or ".") / "recommendations.csv"
        if path.suffix != ".csv":
            path = path / "recommendations.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["window", "asked_at", "next_item", "next_item_rank", "top_items", "top_scores"])
            for i in range(len(rows)):
                writer.writerow([i, f"{float(times[i, -1]):.4f}", int(truth[i]), int(ranks[i]),
                                 " ".join(str(int(v)) for v in top_items[i]), " ".join(f"{float(v):.4f}" for v in top_scores[i])])
        return path


def build(config, ctx):
    return SynergenObjective(config, ctx)
