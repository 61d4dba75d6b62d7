"""Structures as action sequences: the action vocabulary, encode/decode and the state machine.

Pure Python (no torch): the tokenizer, the data set, the constrained decoder and the logits
processor all use it, so the rules of a valid action sequence are written once, in
:meth:`ActionState.violation`.

**Structures.** Over an input of ``n`` tokens, a :class:`Structure` is a set of labelled
:class:`Span` (token offsets ``start < end``, end exclusive) that is *well nested* (two spans are
disjoint or one contains the other) with no two equal ``(start, end, label)``, and a set of
labelled :class:`Link` from a span to a span that closes before it (coreference: a mention to its
antecedent; relations: a span to its argument).

**Actions** (one id each, in one vocabulary after the tokenizer's ids, :class:`ActionLayout`):

- *copy*: the next input token itself (its own id), so the copied ids of a valid sequence spell the
  input exactly;
- *open* ``[``: a span starts before the next input token;
- *close* ``]label``: the innermost open span ends after the last copied token, with its label;
- *link* ``(target, relation)``: right after a close (or a previous link), the span just closed
  points to an earlier span, ``target`` being that span's index in close order;
- *end*: the tokenizer's end-of-sequence id.

Read left to right, the sequence writes the input with the structure inline (ASP's
``[ ... ]`` brackets with labels and pointers). :func:`encode` writes the one canonical sequence
of a structure; :func:`decode` reads any valid sequence back, so ``decode(encode(s)) == s``.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("copy", "open", "close", "link", "end")
"""The five action kinds, in the order of the head's action-kind logits."""
COPY, OPEN, CLOSE, LINK, END = range(5)


class InvalidActions(ValueError):
    """An action sequence that does not describe a valid structure over its input."""


@dataclass(frozen=True, order=True)
class Span:
    start: int
    """Offset of the first token in the span."""
    end: int
    """Offset one past the last token in the span."""
    label: str


@dataclass(frozen=True, order=True)
class Link:
    source: Span
    """The later span (it closes after the target)."""
    target: Span
    """The span it points to."""
    relation: str


@dataclass(frozen=True)
class Structure:
    spans: frozenset
    links: frozenset = frozenset()

    @classmethod
    def of(cls, spans=(), links=()) -> "Structure":
        return cls(frozenset(spans), frozenset(links))


class ActionLayout:
    """Where each action lives in the vocabulary: the tokenizer's ids (copies and the end id), then
    ``open``, one ``close`` per label, and ``max_spans x len(relations)`` link ids
    (``link_id(target, relation) = link_base + target * len(relations) + relation``)."""

    def __init__(self, labels, relations, max_spans: int, token_vocab: int = 257, eos_id: int = 256):
        self.labels = tuple(labels)
        self.relations = tuple(relations)
        if len(set(self.labels)) != len(self.labels) or len(set(self.relations)) != len(self.relations):
            raise ValueError(f"labels and relations must be distinct, got {self.labels}, {self.relations}")
        self.max_spans = int(max_spans)
        self.token_vocab = int(token_vocab)
        self.eos_id = int(eos_id)
        self.open_id = self.token_vocab
        self.close_base = self.open_id + 1
        self.link_base = self.close_base + len(self.labels)
        self.vocab_size = self.link_base + self.max_spans * len(self.relations)

    def __eq__(self, other):
        return isinstance(other, ActionLayout) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def _key(self):
        return (self.labels, self.relations, self.max_spans, self.token_vocab, self.eos_id)

    def close_id(self, label: int) -> int:
        return self.close_base + label

    def link_id(self, target: int, relation: int) -> int:
        return self.link_base + target * len(self.relations) + relation

    def kind(self, action: int) -> int:
        """The action kind (:data:`KINDS` index) of an id."""
        a = int(action)
        if a == self.eos_id:
            return END
        if 0 <= a < self.token_vocab:
            return COPY
        if a == self.open_id:
            return OPEN
        if self.close_base <= a < self.link_base:
            return CLOSE
        if self.link_base <= a < self.vocab_size:
            return LINK
        raise InvalidActions(f"id {a} is outside the action vocabulary (0 .. {self.vocab_size - 1})")

    def label_of(self, action: int) -> int:
        return int(action) - self.close_base

    def link_of(self, action: int) -> tuple[int, int]:
        """(target span index, relation index) of a link id."""
        return divmod(int(action) - self.link_base, len(self.relations))


@dataclass
class _Closed:
    start: int
    end: int
    label: int
    open_step: int
    """Index in the action sequence of the span's open action."""
    close_step: int


class ActionState:
    """The state machine of one action sequence over one input: which actions are valid next.

    ``step(a)`` applies an action; with ``strict`` (the default) an invalid one raises
    :class:`InvalidActions`, else it is recorded in ``errors`` and applied as far as it makes
    sense (unconstrained decoding keeps going so that its output can be judged afterwards).
    ``allowed(budget)`` lists the valid next actions; with ``budget`` (actions left, the end
    included) only those after which the input can still be finished in time.
    """

    def __init__(self, tokens, layout: ActionLayout):
        self.tokens = [int(t) for t in tokens]
        self.layout = layout
        self.cursor = 0
        self.stack: list[tuple[int, int]] = []  # (start offset, open step) of the open spans, innermost last
        self.spans: list[_Closed] = []  # closed spans in close order
        self._keys: set[tuple[int, int, int]] = set()
        self.links: list[tuple[int, int, int]] = []  # (source span, target span, relation)
        self.link_from: int | None = None  # the span just closed, while its links may follow
        self._last_link: tuple[int, int] | None = None
        self.steps = 0
        self.done = False
        self.errors: list[str] = []

    @property
    def n(self) -> int:
        return len(self.tokens)

    def need(self) -> int:
        """Fewest actions that finish the sequence: copy the rest, close every open span, end."""
        return 0 if self.done else self.n - self.cursor + len(self.stack) + 1

    def violation(self, action: int) -> str | None:
        """Why ``action`` is not valid next (None: it is)."""
        lay = self.layout
        if self.done:
            return "an action after the end"
        try:
            kind = lay.kind(action)
        except InvalidActions as exc:
            return str(exc)
        if kind == COPY:
            if self.cursor >= self.n:
                return f"copy of token {action} after the whole input was copied"
            if int(action) != self.tokens[self.cursor]:
                return f"copy of token {action} where the next input token is {self.tokens[self.cursor]}"
            return None
        if kind == OPEN:
            if len(self.spans) + len(self.stack) >= lay.max_spans:
                return f"open beyond max_spans={lay.max_spans}"
            if self.cursor >= self.n:
                return "open after the whole input was copied (a span holds at least one token)"
            return None
        if kind == CLOSE:
            if not self.stack:
                return "close with no open span"
            start = self.stack[-1][0]
            if start >= self.cursor:
                return "close of an empty span"
            if (start, self.cursor, lay.label_of(action)) in self._keys:
                return f"close repeating span ({start}, {self.cursor}, {lay.labels[lay.label_of(action)]})"
            return None
        if kind == LINK:
            if self.link_from is None:
                return "link not right after a close"
            target, relation = lay.link_of(action)
            if target >= self.link_from:
                return f"link from span {self.link_from} to span {target}, which does not close before it"
            if self._last_link is not None and (target, relation) <= self._last_link:
                return f"link {(target, relation)} not after the previous link {self._last_link} (links follow in order, once each)"
            return None
        if self.cursor < self.n:
            return f"end with {self.n - self.cursor} input tokens not copied"
        if self.stack:
            return f"end with {len(self.stack)} spans open"
        return None

    def candidates(self) -> list[int]:
        """Every action that could be valid now, before the checks of :meth:`violation`."""
        lay = self.layout
        out = [lay.eos_id, lay.open_id]
        if self.cursor < self.n:
            out.append(self.tokens[self.cursor])
        if self.stack:
            out.extend(range(lay.close_base, lay.link_base))
        if self.link_from:
            out.extend(range(lay.link_base, lay.link_id(self.link_from - 1, len(lay.relations) - 1) + 1))
        return out

    def allowed(self, budget: int | None = None) -> list[int]:
        """The valid next actions after which the sequence can still be completed (with ``budget``,
        the actions left including the end: completed in time). An action may be valid yet lead to
        a dead end -- e.g. more spans open at one offset than there are labels to close them with at
        the end of the input -- so each candidate is checked by :meth:`completable` first."""
        out = []
        for a in self.candidates():
            if self.violation(a) is not None:
                continue
            if budget is not None and budget < 1 + self._need_after(a):
                continue
            if not self._completable_after(a):
                continue
            out.append(a)
        return out

    def _need_after(self, action: int) -> int:
        kind = self.layout.kind(action)
        base = self.need()
        return {COPY: base - 1, OPEN: base + 1, CLOSE: base - 1, LINK: base, END: 0}[kind]

    def _completable_after(self, action: int) -> bool:
        kind = self.layout.kind(action)
        starts = [s for s, _ in self.stack]
        if kind == COPY:
            return self.completable(self.cursor + 1, starts)
        if kind == OPEN:
            return self.completable(self.cursor, starts + [self.cursor])
        if kind == CLOSE:
            return self.completable(self.cursor, starts[:-1], {(starts[-1], self.cursor, self.layout.label_of(action))})
        return True

    def completable(self, cursor: int | None = None, starts=None, extra=()) -> bool:
        """Whether the open spans (``starts``, outermost first) can all still be closed, innermost
        first, at ends between ``cursor`` and the end of the input, each span non-empty and no
        (start, end, label) repeated (``extra``: keys taken beyond the closed spans'). Closing each
        span at the earliest end that has a free label is optimal, so the greedy check is exact."""
        c = self.cursor if cursor is None else cursor
        starts = [s for s, _ in self.stack] if starts is None else starts
        taken = set(extra)
        labels = range(len(self.layout.labels))
        for s in reversed(starts):
            e = max(c, s + 1)
            while True:
                if e > self.n:
                    return False
                free = next((k for k in labels if (s, e, k) not in self._keys and (s, e, k) not in taken), None)
                if free is not None:
                    taken.add((s, e, free))
                    c = e
                    break
                e += 1
        return True

    def step(self, action: int, strict: bool = True) -> None:
        problem = self.violation(action)
        if problem is not None:
            if strict:
                raise InvalidActions(f"action {self.steps} ({action}): {problem}")
            self.errors.append(f"action {self.steps} ({action}): {problem}")
        lay = self.layout
        kind = lay.kind(action) if 0 <= int(action) < lay.vocab_size else None
        if kind != LINK:
            self.link_from, self._last_link = None, None
        if kind == COPY:
            self.cursor += 1
        elif kind == OPEN:
            self.stack.append((self.cursor, self.steps))
        elif kind == CLOSE and self.stack:
            start, open_step = self.stack.pop()
            label = lay.label_of(action)
            self.spans.append(_Closed(start, self.cursor, label, open_step, self.steps))
            self._keys.add((start, self.cursor, label))
            self.link_from = len(self.spans) - 1
        elif kind == LINK and problem is None:
            target, relation = lay.link_of(action)
            self.links.append((self.link_from, target, relation))
            self._last_link = (target, relation)
        elif kind == END:
            self.done = True
        self.steps += 1

    def finishable(self) -> bool:
        """The sequence so far is complete (ended, or could end now)."""
        return self.done or (self.cursor == self.n and not self.stack)

    def structure(self) -> Structure:
        lay = self.layout
        spans = [Span(s.start, s.end, lay.labels[s.label]) for s in self.spans]
        links = [Link(spans[a], spans[b], lay.relations[r]) for a, b, r in self.links]
        return Structure.of(spans, links)


def decode(actions, tokens, layout: ActionLayout) -> Structure:
    """The structure a complete action sequence describes (a trailing end id is optional).

    Raises :class:`InvalidActions` naming the first invalid action, or an unfinished sequence."""
    state = ActionState(tokens, layout)
    for a in actions:
        state.step(int(a))
    if not state.finishable():
        raise InvalidActions(f"the sequence stops with {state.n - state.cursor} input tokens not copied and {len(state.stack)} spans open")
    return state.structure()


def copied(actions, layout: ActionLayout) -> list[int]:
    """The copy actions of a sequence: the input text it reproduces."""
    return [int(a) for a in actions if 0 <= int(a) < layout.token_vocab and int(a) != layout.eos_id]


def check_structure(structure: Structure, n: int, layout: ActionLayout) -> None:
    """Raise ``ValueError`` unless ``structure`` is a valid structure over ``n`` tokens for ``layout``."""
    spans = sorted(structure.spans)
    for s in spans:
        if not 0 <= s.start < s.end <= n:
            raise ValueError(f"span {s} is not inside the input of {n} tokens (or is empty)")
        if s.label not in layout.labels:
            raise ValueError(f"span {s}: label '{s.label}' is not one of {layout.labels}")
    for i, a in enumerate(spans):
        for b in spans[i + 1 :]:
            if b.start >= a.end:
                break
            if b.end > a.end and b.start > a.start:  # b starts inside a and ends after it
                raise ValueError(f"spans {a} and {b} cross (the structure must be well nested)")
    if len(spans) > layout.max_spans:
        raise ValueError(f"{len(spans)} spans, more than max_spans={layout.max_spans}")
    for link in structure.links:
        if link.source not in structure.spans or link.target not in structure.spans:
            raise ValueError(f"link {link} names a span that is not in the structure")
        if link.relation not in layout.relations:
            raise ValueError(f"link {link}: relation '{link.relation}' is not one of {layout.relations}")


def encode(structure: Structure, tokens, layout: ActionLayout) -> list[int]:
    """The canonical action sequence of ``structure`` over ``tokens`` (without the end id).

    At each offset: the closes of spans ending there (innermost first), each followed by its links
    in (target, relation) order, then the opens of spans starting there (outermost first), then
    the copy of the token. Raises ``ValueError`` for an invalid structure, or a link whose target
    does not close before its source."""
    tokens = [int(t) for t in tokens]
    check_structure(structure, len(tokens), layout)
    label_index = {name: i for i, name in enumerate(layout.labels)}
    rel_index = {name: i for i, name in enumerate(layout.relations)}
    # equal extents: the lower label is opened first (outer), so it closes last
    opens_at: dict[int, list[Span]] = {}
    closes_at: dict[int, list[Span]] = {}
    for s in structure.spans:
        opens_at.setdefault(s.start, []).append(s)
        closes_at.setdefault(s.end, []).append(s)
    order: list[Span] = []
    for p in sorted(closes_at):
        order.extend(sorted(closes_at[p], key=lambda s: (-s.start, -label_index[s.label])))
    index = {s: i for i, s in enumerate(order)}
    links_of: dict[Span, list[tuple[int, int]]] = {}
    for link in structure.links:
        t, r = index[link.target], rel_index[link.relation]
        if t >= index[link.source]:
            raise ValueError(f"link {link}: its target does not close before its source")
        links_of.setdefault(link.source, []).append((t, r))
    out: list[int] = []
    for p in range(len(tokens) + 1):
        for s in sorted(closes_at.get(p, []), key=lambda s: (-s.start, -label_index[s.label])):
            out.append(layout.close_id(label_index[s.label]))
            out.extend(layout.link_id(t, r) for t, r in sorted(links_of.get(s, [])))
        for s in sorted(opens_at.get(p, []), key=lambda s: (-s.end, label_index[s.label])):
            out.append(layout.open_id)
        if p < len(tokens):
            out.append(tokens[p])
    return out


def render(actions, layout: ActionLayout, token_text=None) -> str:
    """A readable form: copied tokens as text, ``⟦`` opens, ``⟧label`` closes, ``→relation:target`` links."""
    parts: list[str] = []
    pending: list[int] = []

    def flush():
        if pending:
            parts.append(token_text(pending) if token_text else bytes(pending).decode("utf-8", errors="replace"))
            pending.clear()

    for a in actions:
        a = int(a)
        if a == layout.eos_id or not 0 <= a < layout.vocab_size:
            continue
        kind = layout.kind(a)
        if kind == COPY:
            pending.append(a)
            continue
        flush()
        if kind == OPEN:
            parts.append("⟦")
        elif kind == CLOSE:
            parts.append("⟧" + layout.labels[layout.label_of(a)])
        else:
            target, relation = layout.link_of(a)
            parts.append(f"→{layout.relations[relation]}:{target}")
    flush()
    return "".join(parts)
