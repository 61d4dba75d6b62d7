"""CtrlDiff's block-length policy and its REINFORCE training.

State: the model's confidence (top-1 probability) at the next ``window`` generated positions when a
block starts (zero-padded past the end). Action: an index into ``block_sizes``. Episode: one
decoding of a batch of prompts with actions sampled from the policy. Reward per sequence:
``agreement with a careful decode (one token per step) - cost * network steps / generated tokens``.
Update: REINFORCE with the batch-mean reward as baseline, ``grad = -mean((r - b) * sum log pi(a|s))``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class BlockPolicy(nn.Module):
    def __init__(self, window: int, n_actions: int, hidden: int = 16):
        super().__init__()
        self.window, self.n_actions, self.hidden = window, n_actions, hidden
        self.net = nn.Sequential(nn.Linear(window, hidden), nn.Tanh(), nn.Linear(hidden, n_actions))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the actions (..., n_actions)."""
        return torch.log_softmax(self.net(features), -1)


def episode(built, decoder, prompts, max_new_tokens: int, reference: torch.Tensor, cost: float, seed: int):
    """Decode once with sampled actions; returns (rewards (B,), [(features, actions, rows)] per decision)."""
    from genloom.core.generation import run

    decoder.sample_actions, decoder.decisions = True, []
    decoder.action_seed = seed
    res = run(built.model, prompts, decoder, max_new_tokens=max_new_tokens, seed=seed)
    out = torch.tensor([ids + [-1] * (max_new_tokens - len(ids)) for ids in res.ids])
    agreement = (out == reference).float().mean(-1)
    steps = decoder.row_steps.float()
    return agreement - cost * steps / max_new_tokens, decoder.decisions


def train_policy(built, decoder, prompts, max_new_tokens: int, *, cost: float = 0.5, episodes: int = 30, lr: float = 0.05,
                 seed: int = 0, sign: float = 1.0) -> list[float]:
    """REINFORCE on ``decoder.policy`` (created if missing); returns the mean reward of each episode.

    ``sign`` -1 ascends the negative reward (the broken variant the tests use)."""
    from genloom.core.generation import run

    if decoder.policy is None:
        torch.manual_seed(seed)
        decoder.policy = BlockPolicy(max(decoder.config.block_sizes), len(decoder.config.block_sizes))
    careful = built.ctx.build("decoder", {"name": "masked-diffusion"})
    ref = run(built.model, prompts, careful, max_new_tokens=max_new_tokens).ids
    reference = torch.tensor([ids + [-1] * (max_new_tokens - len(ids)) for ids in ref])
    opt = torch.optim.Adam(decoder.policy.parameters(), lr=lr)
    history = []
    for e in range(episodes):
        rewards, decisions = episode(built, decoder, prompts, max_new_tokens, reference, cost, seed + 1 + e)
        advantage = rewards - rewards.mean()
        log_prob = torch.zeros_like(rewards)
        for features, actions, rows in decisions:
            lp = decoder.policy(features.clone()).gather(-1, actions.clone().unsqueeze(-1)).squeeze(-1)
            log_prob = log_prob.index_add(0, rows.nonzero().flatten(), lp)
        loss = -sign * (advantage * log_prob).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(rewards.mean()))
    decoder.sample_actions = False
    return history


def save_policy(policy: BlockPolicy, path) -> None:
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    meta = {"window": str(policy.window), "n_actions": str(policy.n_actions), "hidden": str(policy.hidden)}
    save_file({k: v.contiguous() for k, v in policy.state_dict().items()}, str(path), metadata=meta)


def load_policy(path) -> BlockPolicy:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from genloom.core.errors import ConfigError

    if not Path(path).exists():
        raise ConfigError(f"ctrldiff policy '{path}' does not exist (train one with genloom.plugins.ctrldiff.policy.train_policy)", path="decoder.policy_path")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    policy = BlockPolicy(int(meta["window"]), int(meta["n_actions"]), int(meta["hidden"]))
    policy.load_state_dict(load_file(str(path)))
    return policy.eval()
