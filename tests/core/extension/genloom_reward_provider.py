"""A third-party plugin that implements another plugin's hookspec: it provides the ``token-count``
reward through ``genloom_rewards`` (declared by ``genloom_reward_kind``), and listens to
``genloom_best_of_n_chosen``."""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl
from genloom.core.errors import ConfigError
from genloom.core.records import Component

#: (scores, chosen) of every best-of-n call, as the listener saw them.
CHOSEN: list = []
#: The vocabulary sizes the reward's bind() saw.
BOUND: list = []


@dataclass
class TokenCountConfig:
    """Counts occurrences of one token."""

    token: int = 97
    """The token id whose occurrences are counted."""

    def bind(self, ctx):
        BOUND.append(ctx.vocab_size)
        if not 0 <= self.token < ctx.vocab_size:
            raise ConfigError(f"token {self.token} is outside the vocabulary (0..{ctx.vocab_size - 1})", path="reward.token")


class TokenCount:
    def __init__(self, config, ctx):
        self.token = config.token

    def __call__(self, sequences):
        return [float(sum(int(t) == self.token for t in seq)) for seq in sequences]


@hookimpl
def genloom_rewards():
    return [Component(kind="reward", name="token-count", factory="genloom_reward_provider:TokenCount", config=TokenCountConfig,
                      summary="Number of times a token occurs")]


@hookimpl
def genloom_best_of_n_chosen(scores, chosen):
    CHOSEN.append((scores.tolist(), chosen.tolist()))
