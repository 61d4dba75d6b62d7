"""ASP: structures round-trip exactly through their action sequences; constrained decoding yields a
valid structure over the exact input whatever the weights (and unconstrained decoding does not);
the decoder's cached step scores are the objective's teacher-forced ones; a short training run
finds spans in held-out files."""

from __future__ import annotations

import random

import pytest
import torch

from genloom.core.errors import ConfigError, GenerationError
from genloom.core.generation import Generator
from genloom.plugins.asp_structured.actions import (
    ActionLayout, ActionState, InvalidActions, Link, Span, Structure, copied, decode, encode,
)
from genloom.plugins.asp_structured.data import AspCodeData
from genloom.plugins.asp_structured.decoder import AspDecoder
from genloom.testing import check_objective, check_tokenizer, tiny_model, train_briefly

LAYOUT = ActionLayout(("store", "load", "string", "number", "call"), ("def", "coref"), 24)


def _base(**over):
    base = {
        "seed": 0,
        "data": {"name": "asp-code", "source_length": 48, "target_length": 96, "max_lines": 2, "train_size": 120, "eval_size": 20, "batch_size": 16},
        "tokenizer": {"name": "asp-bytes"},
        "head": {"name": "asp", "pointer_dim": 16},
        "backbone": {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2},
        "objective": {"name": "asp"},
        "decoder": {"name": "asp"},
    }
    for key, value in over.items():
        base[key] = value
    return base


@pytest.fixture(scope="module")
def code_examples():
    """Every example of a small asp-code data set (all three splits)."""
    from genloom.plugins.asp_structured import AspCodeConfig

    data = AspCodeData(AspCodeConfig(source_length=48, target_length=96, max_lines=2, train_size=120, eval_size=20))
    out = [ex for split in ("train", "val", "test") for ex in data.examples(split, LAYOUT)]
    assert len(out) == 160
    return out


# -- the action encoding --------------------------------------------------------------------------
def _round_trips(examples, encoder=encode, decoder=decode) -> bool:
    for text, structure in examples:
        tokens = list(text.encode())
        try:
            actions = encoder(structure, tokens, LAYOUT)
            if decoder(actions, tokens, LAYOUT) != structure or copied(actions, LAYOUT) != tokens:
                return False
        except InvalidActions:
            return False
    return True


def _mislabel_close(structure, tokens, layout):
    """Broken: every close of the last label is written with the first label."""
    last = layout.close_id(len(layout.labels) - 1)
    return [layout.close_id(0) if a == last else a for a in encode(structure, tokens, layout)]


def _pointer_off_by_one(structure, tokens, layout):
    """Broken: every link points to the span closed one before its target (when there is one)."""
    out = []
    for a in encode(structure, tokens, layout):
        if layout.kind(a) == 3:
            target, relation = layout.link_of(a)
            a = layout.link_id(max(target - 1, 0), relation)
        out.append(a)
    return out


def test_every_example_of_the_data_round_trips_and_broken_encodings_do_not(code_examples):
    assert _round_trips(code_examples)
    assert sum(len(s.links) for _, s in code_examples) > 20 and any(s.label == "call" for _, st in code_examples for s in st.spans)
    assert not _round_trips(code_examples, encoder=_mislabel_close)
    assert not _round_trips(code_examples, encoder=_pointer_off_by_one)


def _random_structure(rng: random.Random, n: int) -> Structure:
    spans: list[Span] = []
    for _ in range(rng.randint(0, 12)):
        s = rng.randrange(n)
        e = rng.randint(s + 1, min(n, s + 6))
        cand = Span(s, e, rng.choice(LAYOUT.labels))
        crosses = any(o.start < cand.start < o.end < cand.end or cand.start < o.start < cand.end < o.end for o in spans)
        if not crosses and cand not in spans:
            spans.append(cand)
    # links go from a span to one closing before it: read the close order off the encoding
    state = ActionState(list(range(n)), LAYOUT)
    for a in encode(Structure.of(spans), list(range(n)), LAYOUT):
        state.step(a)
    order = [Span(c.start, c.end, LAYOUT.labels[c.label]) for c in state.spans]
    links = set()
    for _ in range(rng.randint(0, 8)):
        if len(order) >= 2:
            i = rng.randrange(1, len(order))
            links.add(Link(order[i], order[rng.randrange(i)], rng.choice(LAYOUT.relations)))
    return Structure.of(spans, links)


def test_random_structures_round_trip_exactly():
    rng = random.Random(0)
    examples = []
    for _ in range(400):
        n = rng.randint(1, 15)
        text = "".join(rng.choice("ab(), =x") for _ in range(n))
        examples.append((text, _random_structure(rng, n)))
    assert any(len({(s.start, s.end) for s in st.spans}) < len(st.spans) for _, st in examples)  # equal extents occur
    assert _round_trips(examples)
    assert not _round_trips(examples, encoder=_mislabel_close)
    assert not _round_trips(examples, encoder=_pointer_off_by_one)


def test_invalid_structures_and_sequences_are_refused():
    tokens = list(b"abcd")
    with pytest.raises(ValueError, match="cross"):
        encode(Structure.of([Span(0, 2, "load"), Span(1, 3, "load")]), tokens, LAYOUT)
    a, b = Span(0, 1, "load"), Span(2, 3, "load")
    with pytest.raises(ValueError, match="does not close before"):
        encode(Structure.of([a, b], [Link(a, b, "coref")]), tokens, LAYOUT)
    good = encode(Structure.of([a, b], [Link(b, a, "coref")]), tokens, LAYOUT)
    assert decode(good + [LAYOUT.eos_id], tokens, LAYOUT) == Structure.of([a, b], [Link(b, a, "coref")])
    for bad, why in [(good[:-1], "not copied"), (good[:-1] + [LAYOUT.open_id] + good[-1:], "spans open"),
                     ([LAYOUT.close_id(0)] + good, "no open span"), ([ord("x")] + good, "next input token"),
                     ([LAYOUT.open_id, LAYOUT.close_id(0)] + good, "empty span"),
                     (good[:2] + [LAYOUT.link_id(0, 0)] + good[2:], "not right after a close")]:
        with pytest.raises(InvalidActions, match=why):
            decode(bad, tokens, LAYOUT)


# -- constrained decoding: valid by construction ------------------------------------------------
def _valid(ids, tokens) -> bool:
    """An independent check: the copies spell the input, the brackets balance and nest, every
    close follows a non-empty open, links follow a close and point to an earlier closed span."""
    lay = LAYOUT
    if not ids or ids[-1] != lay.eos_id or lay.eos_id in ids[:-1]:
        return False
    body = ids[:-1]
    if [a for a in body if a < lay.token_vocab] != tokens:
        return False
    depth, copied_since, closed, after_close = [], 0, 0, False
    for a in body:
        if a < lay.token_vocab:
            depth = [d + 1 for d in depth]
            after_close = False
        elif a == lay.open_id:
            depth.append(0)
            after_close = False
        elif a < lay.link_base:
            if not depth or depth.pop() == 0:
                return False
            closed += 1
            after_close = True
        else:
            target, _ = lay.link_of(a)
            if not after_close or target >= closed - 1:
                return False
    return not depth


SOURCES = ["x = f(x, 1)", "return a + b", "if not os.path.isdir(name):", "s = 'abc' * 3", "y", "for i in range(n): total += i"]


def _sample(gen, *, constrained=True, seeds=range(2), processors=None, decoder=None, max_new_tokens=None):
    outs = []
    for seed in seeds:
        sources = [list(s.encode()) for s in SOURCES]
        node = decoder or {"name": "asp", "greedy": False, "constrained": constrained}
        kwargs = {"processors": processors} if processors is not None else {}
        res = gen.generate(source=sources, max_new_tokens=max_new_tokens or 96, decoder=node, seed=seed, **kwargs)
        outs += list(zip(res.ids, sources))
    return outs


def test_constrained_sampling_from_an_untrained_model_is_always_valid_and_unconstrained_is_not():
    built = tiny_model(base=_base(), seed=3)
    gen = Generator(built)
    hot = [{"name": "temperature", "temperature": 3.0}]  # flatten the random model's scores further
    outs = _sample(gen, processors=hot, seeds=range(2)) + _sample(gen, seeds=range(2, 4))
    outs += _sample(gen, processors=[{"name": "top-k", "k": 2}], seeds=range(1))  # processors act on valid actions only
    assert all(_valid(ids, src) for ids, src in outs)
    structures = [decode(ids, src, LAYOUT) for ids, src in outs]
    assert sum(len(s.spans) for s in structures) > 50 and sum(len(s.links) for s in structures) > 5  # it did build structures
    loose = _sample(gen, constrained=False, processors=hot, seeds=range(1)) + _sample(gen, constrained=False, seeds=range(2, 3))
    assert not all(_valid(ids, src) for ids, src in loose)


def test_the_budget_rule_finishes_within_max_new_tokens():
    built = tiny_model(base=_base(), seed=4)
    gen = Generator(built)
    src = list(b"x = f(y)")
    for budget in (len(src) + 1, len(src) + 3, len(src) + 6):
        for seed in range(5):
            ids = gen.generate(source=[src], max_new_tokens=budget, decoder={"name": "asp", "greedy": False}, seed=seed).ids[0]
            assert len(ids) <= budget and _valid(ids, src)
    plain = gen.generate(source=[src], max_new_tokens=len(src) + 1, decoder={"name": "asp", "greedy": False}).ids[0]
    assert plain == src + [LAYOUT.eos_id]  # room for the copies and the end only: no span
    with pytest.raises(GenerationError, match="needs at least"):
        gen.generate(source=[src], max_new_tokens=len(src), decoder={"name": "asp"})


def test_the_constraints_processor_makes_a_flat_language_model_valid_too():
    base = _base(head={"name": "lm"}, objective={"name": "next-token"}, decoder={"name": "sampling"})
    built = tiny_model(base=base, seed=5)
    gen = Generator(built)
    proc = [{"name": "asp-constraints"}]
    outs = _sample(gen, processors=proc, decoder={"name": "sampling"}, seeds=range(2))
    assert all(_valid(ids, src) for ids, src in outs)
    loose = _sample(gen, processors=[], decoder={"name": "sampling"}, seeds=range(1))
    assert not any(_valid(ids, src) for ids, src in loose)


# -- the structured head: training and decoding score the same distribution -------------------------
class _Forced(AspDecoder):
    """Follows given action sequences and adds up the log-probability the decoder gives each."""

    def __init__(self, config, ctx, targets):
        super().__init__(config, ctx)
        self.targets, self.nll = targets, 0.0

    def propose(self, session):
        head = session.model.head
        h_open, keys, key_valid, next_token = self._context(session)
        logp = head.step_log_probs(self.now, h_open, keys, key_valid, next_token)
        k = [len(g) for g in session.generated]
        gold = torch.tensor([t[min(i, len(t) - 1)] for t, i in zip(self.targets, k)])
        live = ~session.finished
        self.nll -= float(logp[torch.arange(len(gold)), gold][live].sum())
        return gold


def test_cached_decoding_scores_equal_the_teacher_forced_objective(code_examples):
    built = tiny_model(base=_base(), seed=6)
    built.model.double().eval()
    examples = [ex for ex in code_examples if len(ex[0]) <= 48 and ex[1].links][:6]
    assert examples
    from genloom.core.data import SourceTargetPairs
    from genloom.core.generation import run

    pairs = [(list(t.encode()), encode(s, t.encode(), LAYOUT)) for t, s in examples]
    data = SourceTargetPairs(pairs, 48, 96, pad_id=LAYOUT.eos_id, eos_id=LAYOUT.eos_id)
    batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
    with torch.no_grad():
        terms = built.model.objective.terms(built.model, batch)
    objective_nll = float(terms["kind"] + terms["label"] + terms["pointer"])
    targets = [p[1] + [LAYOUT.eos_id] for p in pairs]
    prompts = [[LAYOUT.eos_id] * (48 - len(p[0])) + p[0] for p in pairs]

    def decoded_nll(decoder_cls=_Forced):
        dec = decoder_cls(built.decoder.config, built.ctx, targets)
        run(built.model, prompts, dec, max_new_tokens=96, eos_id=LAYOUT.eos_id)
        return dec.nll

    assert decoded_nll() == pytest.approx(objective_nll, rel=1e-9)

    class OpenOffByOne(_Forced):  # broken: the label reads the hidden state after the open, not at it
        def _context(self, session):
            saved = [st.stack[:] for st in self.states]
            for st in self.states:
                st.stack = [(s, o + 1) for s, o in st.stack]
            try:
                return super()._context(session)
            finally:
                for st, s in zip(self.states, saved):
                    st.stack = s

    assert abs(decoded_nll(OpenOffByOne) - objective_nll) > 1e-3


def test_objective_has_gradients_and_bad_configs_are_clear():
    built = tiny_model(base=_base(), data=True, seed=0)
    ds = built.data.load("train", built.model.tokenizer, built.ctx)
    check_objective(built, built.data.collate([ds[i] for i in range(4)]))
    with pytest.raises(ConfigError, match="asp-bytes"):
        tiny_model(base=_base(tokenizer={"name": "bytes"}))
    with pytest.raises(ConfigError, match="lack"):
        tiny_model(base=_base(tokenizer={"name": "asp-bytes", "labels": ["store"]}))
    flat = tiny_model(base=_base(head={"name": "lm"}), data=True)
    with pytest.raises(ConfigError, match="'asp' head"):
        flat.model.loss(flat.data.collate([ds[i] for i in range(2)]))
    gen = Generator(tiny_model(base=_base(head={"name": "lm"}, objective={"name": "next-token"})))
    with pytest.raises(GenerationError, match="'asp' head"):
        gen.generate(source=[list(b"x")], max_new_tokens=4)


def test_tokenizer_round_trips_text_and_renders_structure():
    check_tokenizer({"name": "asp-bytes"}, ["x = f(y)", "def g(a, b):\n    return a"])
    built = tiny_model(base=_base())
    text = "x = f(x)"
    x0, x1, f, call = Span(0, 1, "store"), Span(6, 7, "load"), Span(4, 5, "load"), Span(4, 8, "call")
    actions = encode(Structure.of([x0, x1, f, call], [Link(x1, x0, "def")]), text.encode(), LAYOUT)
    assert built.model.tokenizer.decode(actions) == "⟦x⟧store = ⟦⟦f⟧load(⟦x⟧load→def:0)⟧call"


# -- it learns --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_short_training_finds_spans_in_held_out_files():
    from genloom.plugins.asp_structured.evaluate import evaluate_examples

    base = _base(data={"name": "asp-code", "source_length": 32, "target_length": 64, "max_lines": 1, "train_size": 3000, "eval_size": 60, "batch_size": 32},
                 backbone={"name": "transformer", "d_model": 48, "n_layers": 2, "n_heads": 4})
    built = tiny_model(base=base, data=True, seed=0)
    train_briefly(built, 150, lr=3e-3, batch_size=32)
    data = built.data
    test = data.examples("test", LAYOUT)
    assert not set(data.files["test"]) & set(data.files["train"])
    result = evaluate_examples(Generator(built), test)
    assert result["valid"] == 1.0
    assert result["span"]["f1"] > 0.3, result


def test_shipped_config_validates_and_the_data_binds_before_any_tokenizer():
    from pathlib import Path

    from genloom.core import config as config_mod
    from genloom.core.context import BuildContext
    from genloom.core.plugins import get_registry

    validated = config_mod.load(Path(__file__).resolve().parents[3] / "configs" / "asp-structured.yaml")
    ctx = BuildContext(get_registry())
    validated.components["data"].config.bind(ctx)  # what reading a run's tokenizer back does
    assert ctx.source_length == 64 and ctx.target_length == 112


@pytest.mark.slow
def test_a_trained_run_loads_back_generates_and_evaluates(tmp_path):
    import genloom
    from genloom.core.evaluation import evaluate_run
    from genloom.core.training import train

    cfg = _base()
    cfg.update(logger="none", optimizer={"lr": 3e-3, "warmup_steps": 1},
               trainer={"max_steps": 2, "val_every_steps": 2, "checkpoint_every_steps": 2, "progress": False, "threads": 1, "val_batches": 1})
    train(cfg, run_dir=tmp_path / "run", generate=False)
    gen = genloom.load(tmp_path / "run")
    src = list(b"x = f(x)")
    ids = gen.generate(source=[src], max_new_tokens=40, decoder={"name": "asp", "greedy": False}, seed=0).ids[0]
    assert _valid(ids, src) and gen.tokenizer.decode(ids).replace("⟦", "").startswith("x")
    table = evaluate_run(gen, {"max_examples": "8"})
    assert "| span |" in table and "valid outputs: 1.0000" in table


def test_a_generic_decoder_is_refused_with_a_message_naming_the_asp_decoder():
    """The head's outputs are action kinds, not tokens: greedy would silently write nonsense."""
    from genloom.core.generation import GenerationError

    gen = Generator(tiny_model(base=_base(), seed=3))
    with pytest.raises(GenerationError, match="AspDecoder"):
        gen.generate(source=[list(b"x = 1")], max_new_tokens=8, decoder="greedy")
    assert gen.generate(source=[list(b"x = 1")], max_new_tokens=12).ids  # its own decoder still runs
