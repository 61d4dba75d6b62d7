"""Constrained ASP decoding on the shared loop: one action per step, valid by construction.

Per sequence the decoder keeps the action state machine (:class:`~.actions.ActionState`) over
its input (the source block without its padding) and the hidden state of every action taken.
Each step:

1. **score**: the head's factorised log-probabilities over the whole action vocabulary
   (:meth:`AspHead.step_log_probs`): copy sits on the next input token, close labels read the
   innermost open span (its open action's hidden state and the current one), links read the
   keys of the spans closed before the one just closed;
2. **constrain** (``constrained: true``): every action the state machine rejects is set to -inf
   -- copy only the next input token, open while spans remain (``max_spans``) and input is left,
   close only a non-empty open span (not repeating a span), links only right after a close, to
   an earlier span, in order; end only once the whole input is copied and no span is open; and
   only actions after which the structure can still be completed (no dead end), within the
   budget (``max_new_tokens``) -- :meth:`ActionState.allowed`;
3. **process**: the session's logits processors (temperature, top-k...), which so choose among
   valid actions only;
4. **choose**: greedy (``greedy: true``) or a draw with the session's generator; the action is
   committed and fed back, and the state machine steps.

So every output of the constrained decoder copies the input exactly and describes a well-nested
structure, whatever the weights. Without the constraint the same scores may end early, close an
unopened span or leave spans open (the state machine then records the errors and keeps going).
"""

from __future__ import annotations

import torch

from genloom.core.data import pad_id_of
from genloom.core.errors import GenerationError
from genloom.core.generation import Commit, Decoder, initial_capacity

from .actions import ActionState
from .head import AspHead
from .objective import source_tokens

NEG = float("-inf")


def allowed_mask(states, vocab_size: int, budgets=None, device=None) -> torch.Tensor:
    """(B, V) True at the actions each state allows (with ``budgets``: that leave time to finish);
    a finished sequence (whose row the session no longer extends) allows its end id."""
    mask = torch.zeros(len(states), vocab_size, dtype=torch.bool)
    for b, st in enumerate(states):
        ok = [st.layout.eos_id] if st.done else st.allowed(None if budgets is None else max(int(budgets[b]), 1))
        if ok:
            mask[b, ok] = True
    return mask.to(device) if device is not None else mask


class AspDecoder(Decoder):
    exact = None

    @property
    def constrained(self) -> bool:
        return bool(getattr(self.config, "constrained", True))

    def start(self, session) -> None:
        head = session.model.head
        if not isinstance(head, AspHead):
            raise GenerationError(f"the asp decoder needs the 'asp' head (its factorised action scores), got {type(head).__name__}")
        layout = head.layout
        S = int(self.ctx.get("source_length") or 0) if self.ctx is not None else 0
        if not S:
            raise GenerationError("the asp decoder needs a source-conditioned model (its data publishes source_length): call generate(source=...)")
        pad = pad_id_of(session.model.tokenizer)
        self.states, prefix_len = [], []
        for b in range(session.batch_size):
            row = session.prompt_ids[b][session.prompt_valid[b]].tolist()
            if len(row) < S:
                raise GenerationError(f"prompt {b} is shorter than the source block ({len(row)} < source_length={S}): call generate(source=...)")
            st = ActionState(source_tokens(row[:S], pad), layout)
            for a in row[S:]:
                st.step(a, strict=self.constrained)
            self.states.append(st)
            prefix_len.append(len(row) - S)
        if self.constrained:
            short = [b for b, st in enumerate(self.states) if st.need() > session.max_new_tokens]
            if short:
                b = short[0]
                raise GenerationError(f"sequence {b} needs at least {self.states[b].need()} more actions (copy its {self.states[b].n} input tokens, close, end) but max_new_tokens={session.max_new_tokens}")
        capacity = initial_capacity(session)
        session.state = session.model.init_state(session.batch_size, capacity)
        session.metrics.count_forward("target")
        hid = session.model.hidden(session.prompt_ids, state=session.state, valid=session.prompt_valid)
        D = hid.shape[-1]
        P = hid.shape[1]
        width = max(prefix_len) + session.max_new_tokens + 1
        self.memory = hid.new_zeros(session.batch_size, width, D)  # hidden state at the input of target action k
        for b, k in enumerate(prefix_len):
            if k:
                self.memory[b, :k] = hid[b, P - k :]
        self.now = hid[:, -1]

    def _context(self, session):
        head = session.model.head
        B, M = session.batch_size, head.layout.max_spans
        open_step = torch.zeros(B, dtype=torch.long)
        key_open = torch.zeros(B, M, dtype=torch.long)
        key_close = torch.zeros(B, M, dtype=torch.long)
        key_valid = torch.zeros(B, M, dtype=torch.bool)
        next_token = torch.full((B,), -1, dtype=torch.long)
        for b, st in enumerate(self.states):
            if st.stack:
                open_step[b] = st.stack[-1][1]
            if st.cursor < st.n:
                next_token[b] = st.tokens[st.cursor]
            for j in range(min(st.link_from or 0, M)):
                key_open[b, j], key_close[b, j], key_valid[b, j] = st.spans[j].open_step, st.spans[j].close_step, True
        dev = self.memory.device
        rows = torch.arange(B, device=dev)
        h_open = self.memory[rows, open_step.to(dev)]
        mem = self.memory
        D = mem.shape[-1]
        ko = mem.gather(1, key_open.to(dev)[..., None].expand(-1, -1, D))
        kc = mem.gather(1, key_close.to(dev)[..., None].expand(-1, -1, D))
        keys = head.span_keys(ko, kc)
        return h_open, keys, key_valid.to(dev), next_token.to(dev)

    def propose(self, session):
        head = session.model.head
        h_open, keys, key_valid, next_token = self._context(session)
        logits = head.step_log_probs(self.now, h_open, keys, key_valid, next_token)
        if self.constrained:  # before the processors, so that top-k / top-p choose among valid actions
            budgets = session.remaining.tolist()
            logits = logits.masked_fill(~allowed_mask(self.states, logits.shape[-1], budgets, logits.device), NEG)
        return self.choose(session, session.process(logits))

    def choose(self, session, logits):
        if getattr(self.config, "greedy", False):
            return logits.argmax(-1)
        probs = torch.softmax(logits.float(), -1)
        return torch.multinomial(probs, 1, generator=session.generator)[:, 0]

    def verify(self, session, proposal) -> Commit:
        return Commit.all(proposal)

    def advance(self, session, commit) -> None:
        tokens = commit.tokens[:, :1]
        for b, st in enumerate(self.states):
            if int(session.last_kept[b]) and not st.done:
                st.step(int(tokens[b, 0]), strict=self.constrained)
        session.metrics.count_forward("target")
        h = session.model.hidden(tokens, state=session.state)[:, -1]
        for b, st in enumerate(self.states):
            k = st.steps - 1
            if 0 <= k < self.memory.shape[1]:
                self.memory[b, k] = h[b]
        self.now = h


def build(config, ctx):
    return AspDecoder(config, ctx)
