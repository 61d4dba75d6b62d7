"""Source-conditioned generation: the prefix-LM layout, its loss mask, incremental decoding after
the source prefill, and the embedded seq2seq data (determinism, split disjointness)."""

from __future__ import annotations

import pytest
import torch

from genloom.core.data import SourceTargetPairs, source_block
from genloom.core.generation import Generator, GenerationError
from genloom.core.pattern import CAUSAL, FULL, prefix
from genloom.testing import tiny_model

S, T = 5, 6


def _config(**data):
    return {
        "data": {"name": "seq2seq", "source_length": S, "target_length": T, "max_length": 5, "train_size": 50, "eval_size": 10, **data},
        "tokenizer": {"name": "bytes"},
        "head": {"name": "lm"},
        "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4},
        "objective": {"name": "next-token"},
    }


@pytest.fixture(scope="module")
def built():
    b = tiny_model(base=_config(), seed=0)
    b.model.double().eval()
    return b


def _jacobian_blocks(model, pattern, length):
    """|d hidden[q] / d input embedding[k]| summed over features, (L, L)."""
    torch.manual_seed(0)
    h = torch.randn(1, length, model.ctx.d_model, dtype=torch.float64, requires_grad=True)
    out = model.backbone(h, pattern=pattern)
    rows = []
    for q in range(length):  # a random projection of each output row: one backward pass per row
        (grad,) = torch.autograd.grad((out[0, q] * torch.randn(out.shape[-1], dtype=torch.float64)).sum(), h, retain_graph=True)
        rows.append(grad[0].abs().sum(-1))
    return torch.stack(rows)


def _prefix_lm_ok(dep, source_length):
    """Every position depends on every source position; a target position on no later position."""
    L = dep.shape[0]
    later = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
    later[:, :source_length] = False
    sees_source = bool((dep[:, :source_length] > 1e-12).all())
    no_future = float(dep[later].max()) == 0.0
    return sees_source, no_future


def test_the_objective_reads_the_source_under_the_prefix_pattern(built):
    assert built.ctx.source_length == S and built.model.objective.pattern == prefix(S)


def test_target_depends_on_every_source_token_and_on_no_future_target_token(built):
    """The Jacobian of each position's output with respect to every input: nonzero on every source
    position (the source is bidirectional), exactly zero on later target positions."""
    assert _prefix_lm_ok(_jacobian_blocks(built.model, prefix(S), S + T), S) == (True, True)
    # broken variants: a causal pattern hides later source tokens; a full one leaks the future
    assert _prefix_lm_ok(_jacobian_blocks(built.model, CAUSAL, S + T), S) == (False, True)
    assert _prefix_lm_ok(_jacobian_blocks(built.model, FULL, S + T), S) == (True, False)


def test_the_loss_counts_target_positions_only(built):
    pairs = [([1, 2, 3], [4, 5]), ([7], [8, 9, 10, 11]), ([], [12])]
    data = SourceTargetPairs(pairs, S, T, pad_id=256, eos_id=256)
    batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
    assert batch["mask"].sum(1).tolist() == [3, 5, 2]  # the target tokens and one end-of-sequence each
    ids = batch["ids"]
    for b, (src, tgt) in enumerate(pairs):
        assert ids[b, :S].tolist() == source_block(src, S, 256)
        scored = ids[b, 1:][batch["mask"][b]].tolist()
        assert scored == tgt + [256]
    out = built.model.loss(batch)
    logits = built.model(ids[:, :-1])
    per = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(3, -1)
    expected = per[batch["mask"]].mean().float()  # the objective scores in float32
    torch.testing.assert_close(out["loss"], expected, rtol=0, atol=1e-6)
    # changing what follows the end-of-sequence (padding) leaves the loss unchanged
    changed = dict(batch, ids=ids.clone())
    changed["ids"][0, S + 3 :] = 65
    torch.testing.assert_close(built.model.loss(changed)["loss"], out["loss"], rtol=0, atol=1e-12)
    # a broken variant: scoring every position moves the loss
    assert not torch.allclose(built.model.loss({"ids": ids})["loss"], out["loss"])


def test_full_forward_equals_incremental_decoding_after_the_source_prefill(built):
    model = built.model
    torch.manual_seed(3)
    ids = torch.randint(0, 256, (2, S + T))
    full = model(ids)
    state = model.init_state(2, S + T)
    steps = [model(ids[:, :S], state=state)]
    for j in range(S, S + T):
        steps.append(model(ids[:, j : j + 1], state=state))
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-10)
    # a broken variant: prefilling the source causally differs from the bidirectional forward
    state = model.init_state(2, S + T)
    causal = model(ids[:, :S], pattern=CAUSAL, state=state)
    assert not torch.allclose(causal, full[:, :S])


def test_generate_takes_a_source_and_decodes_after_it(built):
    gen = Generator(built)
    src = list(b"abc")
    result = gen.generate(source=[src, list(b"z")], max_new_tokens=4, decoder="greedy")
    # greedy from the block equals argmax of the full forward, step by step
    for b, s in enumerate([src, list(b"z")]):
        ids = source_block(s, S, 256)
        for t in result.ids[b]:
            nxt = int(built.model(torch.tensor([ids]))[0, -1].argmax())
            assert nxt == t
            ids.append(t)
    with pytest.raises(GenerationError, match="source_length"):
        gen.generate(source=list(b"abcdefgh"), max_new_tokens=2)
    with pytest.raises(GenerationError, match="prompt_ids"):
        gen.generate(max_new_tokens=2)


def test_source_needs_a_conditioned_model():
    b = tiny_model(base={k: v for k, v in _config().items() if k != "data"}, seed=0)
    with pytest.raises(GenerationError, match="source-conditioned"):
        Generator(b).generate(source=[1, 2], max_new_tokens=2)


# -- embedded data --------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["reverse", "sort", "letter-set", "letter-set-shuffled", "addition", "words-to-digits", "digits-to-words"])
def test_synthetic_tasks_are_exact_deterministic_and_split_by_source(task):
    from genloom.plugins.baseline.seq2seq import synthetic_splits

    b = tiny_model(base=_config(task=task, source_length=40, target_length=40, max_digits=2), data=True)
    cfg = b.data.config
    a, again = synthetic_splits(cfg), synthetic_splits(cfg)
    assert a == again
    train = {s for s, _ in a["train"]}
    assert train and not train & {s for s, _ in a["test"]} and not train & {s for s, _ in a["val"]}
    for s, t in a["train"][:20]:
        if task == "reverse":
            assert t == s[::-1]
        elif task == "sort":
            assert t == "".join(sorted(s))
        elif task.startswith("letter-set"):
            assert sorted(t) == sorted(set(s))
        elif task == "addition":
            x, y = s.split("+")
            assert int(t) == int(x) + int(y)
    if task.startswith("letter-set"):  # first-appearance order always, or (shuffled) mostly not
        in_order = [t == "".join(dict.fromkeys(s)) for s, t in a["train"][:50]]
        assert all(in_order) if task == "letter-set" else sum(in_order) < 10
    loaded = b.data.load("train", b.model.tokenizer, b.ctx)
    assert len(loaded) == len(a["train"]) and loaded[0]["ids"].shape == (80,)


def test_number_words():
    from genloom.plugins.baseline.seq2seq import number_words

    assert number_words(0) == "zero" and number_words(421) == "four hundred twenty-one"
    assert number_words(120015) == "one hundred twenty thousand fifteen"


def test_docstring_signature_pairs_split_by_file():
    b = tiny_model(base=_config(task="docstring-signature", source_length=80, target_length=80, train_size=20, eval_size=5), data=True)
    data = b.data
    texts = {k: data.texts(k) for k in ("train", "val", "test")}
    assert all(texts.values())
    files = data.files
    assert not set(files["train"]) & set(files["test"]) and not set(files["train"]) & set(files["val"])
    for s, t in texts["test"]:
        assert "(" in t and t.endswith(")") and s
    loaded = data.load("test", b.model.tokenizer, b.ctx)
    assert len(loaded) == len(texts["test"])


@pytest.mark.parametrize("decoder", ["speculative", "sparse-to-dense"])
def test_decoders_holding_back_the_last_prompt_token_keep_the_source_block_whole(built, decoder):
    """Greedy speculative-style decoders feed the last prompt token with their first drafts; when the
    prompt ends inside the bidirectional source block (empty target prefix) that token must still be
    part of the block every source position sees (Session.prefill_all_but_last): token for token the
    plain greedy output. Broken variant: prefilling prompt[:-1] as before changes the tokens."""
    from genloom.core import generation
    from genloom.core.generation import run

    gen = Generator(built)
    with torch.no_grad():
        for p in built.model.parameters():
            p.mul_(3.0)  # attention far from uniform, so a split source block shows
    try:
        sources = [list(b"abc"), list(b"hello"), list(b"x")]
        prompts = gen.source_prompts(sources)
        greedy = run(built.model, prompts, built.ctx.build("decoder", "greedy"), max_new_tokens=T, seed=0).ids
        node = {"name": decoder, "gamma": 3} if decoder == "sparse-to-dense" else {"name": "speculative", "draft": _config(), "gamma": 3, "greedy": True}
        dec = built.ctx.build("decoder", node)
        if decoder == "speculative":
            dec._draft = built.model  # a draft equal to the target: every difference comes from the prefill
        assert run(built.model, prompts, dec, max_new_tokens=T, seed=0).ids == greedy

        def split_prefill(self, state, *, model=None, name="target"):
            self.forward(self.prompt_ids[:, :-1], state=state, valid=self.prompt_valid[:, :-1], model=model, name=name)

        original = generation.Session.prefill_all_but_last
        generation.Session.prefill_all_but_last = split_prefill
        try:
            assert run(built.model, prompts, dec, max_new_tokens=T, seed=0).ids != greedy
        finally:
            generation.Session.prefill_all_but_last = original
    finally:
        with torch.no_grad():
            for p in built.model.parameters():
                p.div_(3.0)


def test_the_end_of_run_sample_of_a_conditioned_model_decodes_validation_sources(tmp_path):
    """Without a prompt, the sample after training shows real held-out sources, not an empty one."""
    from genloom.core.config import GenerateConfig
    from genloom.core.training import _sample

    b = tiny_model(base=_config(), data=True, seed=0)
    b.model.eval()
    val = b.data.load("val", b.model.tokenizer, b.ctx)
    text = _sample(b, GenerateConfig(max_new_tokens=3, num_samples=2), tmp_path)
    shown = [part.split(" -> ")[0] for part in text.split("\n---\n")]
    assert shown == [b.model.tokenizer.decode(src) for src, _ in val.pairs[:2]] and all(shown)
