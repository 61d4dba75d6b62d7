"""TEMPO's prompt pool: keys and prompts; a query retrieves the top-k prompts by cosine similarity with the keys."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class PromptPool(nn.Module):
    """``pool_size`` (key (d,), prompt (prompt_len, d)) pairs; ``forward(query (B, d))`` -> (prompts (B, k*prompt_len, d), indices (B, k), matching loss)."""

    def __init__(self, pool_size: int, prompt_len: int, d_model: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.keys = nn.Parameter(torch.empty(pool_size, d_model).uniform_(-1, 1))
        self.prompts = nn.Parameter(torch.empty(pool_size, prompt_len, d_model).uniform_(-0.1, 0.1))

    def similarity(self, query: torch.Tensor) -> torch.Tensor:
        """(B, pool_size) cosine similarity of each query with each key."""
        return F.normalize(query, dim=-1) @ F.normalize(self.keys, dim=-1).T

    def forward(self, query: torch.Tensor):
        similarity = self.similarity(query)
        indices = similarity.topk(self.top_k, dim=-1).indices  # (B, k), by decreasing similarity
        prompts = self.prompts[indices].flatten(1, 2)  # only these rows enter the graph
        matching = (1.0 - similarity.gather(1, indices)).mean()
        return prompts, indices, matching
