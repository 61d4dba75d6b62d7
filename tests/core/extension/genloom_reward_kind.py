"""A third-party plugin that extends genloom with a new component kind.

It declares the kind ``reward`` (top-level config key ``reward:``) with a hookspec of its own,
``genloom_rewards``, whose implementations (in other plugins) return the kind's records; a second
hookspec, ``genloom_best_of_n_chosen``, is a notification its decoder calls through ``ctx.hook``.
The ``best-of-n`` decoder draws ``n`` samples per prompt and keeps the one the reward scores
highest (``genloom_reward_kind_decoder``, imported only when built): its own ``reward`` node when given (a nested node, validated at config time), otherwise
the configured top-level reward, which assembly publishes as ``ctx.reward``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pluggy

from genloom.core import hookimpl, records

hookspec = pluggy.HookspecMarker("genloom")


class RewardHookspecs:
    """The hookspecs this plugin adds (with ``genloom_addhooks``)."""

    @hookspec
    def genloom_rewards(self):
        """Reward functions. Return a list of ``records.Component(kind="reward", ...)``; the factory
        builds a callable ``(ids: list[list[int]]) -> list[float]``."""

    @hookspec
    def genloom_best_of_n_chosen(self, scores, chosen):
        """Called by ``best-of-n`` after each call: ``scores`` (B, n) and the ``chosen`` (B,) candidates."""


@hookimpl
def genloom_addhooks(pluginmanager):
    pluginmanager.add_hookspecs(RewardHookspecs)


@hookimpl
def genloom_component_kinds():
    return [records.ComponentKind("reward", "Scores generated sequences", config_key="reward", hook="genloom_rewards")]


@dataclass
class BestOfNConfig:
    """Best-of-n sampling under a reward."""

    n: int = 4
    """Candidates drawn per prompt."""
    reward: dict | str | None = records.node_field("reward")
    """A reward node of this decoder's own; None: the config's top-level ``reward`` (``ctx.reward``)."""

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")


@hookimpl
def genloom_decoders():
    return [records.decoder("best-of-n", "genloom_reward_kind_decoder:BestOfN", BestOfNConfig, "Keeps the best of n samples under a reward")]
