"""The ``asp-constraints`` logits processor: the same constraint for any model over the action vocabulary.

``(logits (B, V), history (B, T)) -> logits``: each row's history (left-padded with -1) is its
source block followed by the actions so far; the processor replays them through the state machine
and sets every action it rejects to -inf. With it, a plain left-to-right LM trained on the flattened
action sequences (head ``lm``, objective ``next-token``, any decoder that applies processors) only
ever writes valid structures over its input, e.g.
``genloom generate RUN source="x = f(y)" processors='[{name: asp-constraints}]'``. A processor does
not see ``max_new_tokens``, so the budget rule of the ``asp`` decoder uses ``max_actions`` (default:
the data's ``target_length``): an output that may run to ``max_actions`` actions is always complete.
"""

from __future__ import annotations

import torch

from genloom.core.errors import GenerationError

from .actions import ActionLayout, ActionState, InvalidActions
from .objective import source_tokens

NEG = float("-inf")


class AspConstraints:
    def __init__(self, layout: ActionLayout, source_length: int, pad_id: int, max_actions: int | None = None):
        self.layout, self.source_length, self.pad_id = layout, source_length, pad_id
        self.max_actions = max_actions

    def state(self, row) -> ActionState:
        """The state machine after one history row (prompt + generated ids, left-padded with -1)."""
        ids = [int(t) for t in row if int(t) >= 0]
        if len(ids) < self.source_length:
            raise GenerationError(f"asp-constraints: a history of {len(ids)} ids is shorter than the source block (source_length={self.source_length}); generate with source=...")
        st = ActionState(source_tokens(ids[: self.source_length], self.pad_id), self.layout)
        try:
            for a in ids[self.source_length :]:
                st.step(a)
        except InvalidActions as exc:
            raise GenerationError(f"asp-constraints: the sequence so far is not a valid action prefix ({exc})") from None
        return st

    def __call__(self, logits: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] != self.layout.vocab_size:
            raise GenerationError(f"asp-constraints: the model scores {logits.shape[-1]} ids but the action vocabulary has {self.layout.vocab_size}")
        mask = torch.zeros_like(logits, dtype=torch.bool)
        for b, row in enumerate(history.tolist()):
            st = self.state(row)
            budget = None if self.max_actions is None else max(self.max_actions - st.steps, 1)
            ok = st.allowed(budget) if not st.done else [self.layout.eos_id]
            mask[b, ok] = True
        return logits.masked_fill(~mask, NEG)


def build(config, ctx):
    from genloom.core.data import pad_id_of
    from genloom.core.errors import ConfigError

    from .data import layout_of

    source_length = ctx.get("source_length")
    if not source_length:
        raise ConfigError("asp-constraints needs source-conditioned data (a data set that publishes source_length, e.g. 'asp-code')", path="processors")
    max_actions = config.max_actions if config.max_actions is not None else ctx.get("target_length")
    return AspConstraints(layout_of(ctx, "processors"), int(source_length), pad_id_of(ctx.tokenizer), max_actions)
