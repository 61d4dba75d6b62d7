"""A tiny byte model and a synthetic text stream for the mtp tests (trains in seconds on a CPU)."""

from __future__ import annotations

import torch

from genloom.core import config as config_mod
from genloom.core.model import assemble

SENTENCES = [
    b"the quick brown fox jumps over the lazy dog. ",
    b"pack my box with five dozen liquor jugs! ",
    b"how vexingly quick daft zebras jump; ",
    b"sphinx of black quartz, judge my vow? ",
]


CYCLE = b"abcdefghijklmnopqrstuvwxyz0123456789"  # distinct bytes: the next byte follows from the last


def periodic(repeats: int = 60) -> torch.Tensor:
    """A periodic stream (windows start at random offsets): every future token is predictable."""
    return torch.tensor(list(CYCLE * repeats), dtype=torch.long)


def stream(repeats: int = 40, seed: int = 0) -> torch.Tensor:
    """The sentences in a random order, many times: the next byte depends on the context."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randint(len(SENTENCES), (repeats,), generator=g).tolist()
    return torch.tensor(list(b"".join(SENTENCES[i] for i in order)), dtype=torch.long)


def batches(data: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    while True:
        start = torch.randint(len(data) - seq_len - 1, (batch_size,), generator=generator)
        yield {"ids": torch.stack([data[s : s + seq_len + 1] for s in start.tolist()])}


def model_config(d_model: int = 48, n_layers: int = 2, rank: int = 8, n_masks: int = 3, **objective) -> dict:
    return {
        "tokenizer": {"name": "bytes"},
        "backbone": {"name": "mtp-gated-lora", "rank": rank, "base": {"name": "transformer", "d_model": d_model, "n_layers": n_layers, "n_heads": 4}},
        "head": {"name": "mtp"},
        "objective": {"name": "mtp", "n_masks": n_masks, **objective},
        "decoder": {"name": "mtp"},
    }


def build(cfg: dict | None = None):
    validated = config_mod.validate(config_mod.compose(base=cfg or model_config()))
    return assemble(validated, data=False)


def base_parameters(model):
    return list(model.backbone.base.parameters()) + list(model.head.base.parameters())


def train_base(model, data, steps: int, *, lr: float = 3e-3, batch_size: int = 16, seq_len: int = 64, seed: int = 0):
    """Next-token training of the base backbone and head (the adapters stay untouched)."""
    g = torch.Generator().manual_seed(seed)
    params = [p for p in base_parameters(model) if not any(p is q for q in lora_and_mtp(model))]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    it = batches(data, batch_size, seq_len, g)
    model.train()
    for _ in range(steps):
        ids = next(it)["ids"]
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)
    return float(loss.detach())


def lora_and_mtp(model):
    from genloom.plugins.mtp.lora import lora_parameters

    return list(lora_parameters(model.backbone)) + [model.head.mask_embedding] + list(model.head.sampler.parameters())


def train_mtp(model, data, steps: int, *, lr: float = 3e-3, batch_size: int = 16, seq_len: int = 64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    it = batches(data, batch_size, seq_len, g)
    model.train()
    for _ in range(steps):
        out = model.loss(next(it))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return {k: float(v.detach()) for k, v in out.items()}
