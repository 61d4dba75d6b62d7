"""The Python generation API: tensor prompts, the transformers-style shorthand, seeds, load()."""

import pytest
import torch

import genloom
from genloom.core.errors import ConfigError, GenerationError

TINY = {
    "seed": 0,
    "logger": "none",
    "tokenizer": {"name": "bytes"},
    "head": {"name": "lm"},
    "backbone": {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 4},
    "objective": {"name": "next-token"},
    "decoder": {"name": "greedy"},
    "processors": [{"name": "repetition-penalty", "penalty": 1.5}],
}


@pytest.fixture(scope="module")
def gen():
    return genloom.load(TINY)


def test_two_loads_of_one_config_give_identical_weights_and_seed_changes_them():
    a, b, c = genloom.load(TINY), genloom.load(TINY), genloom.load(TINY, seed=1)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    d = genloom.load({**TINY, "seed": 1})
    assert all(torch.equal(sc[k], v) for k, v in d.model.state_dict().items())
    with pytest.raises(ConfigError, match="seed"):
        genloom.load(TINY, seed="x")


def test_tensor_prompts_equal_list_prompts(gen):
    lists = gen.generate([[1, 2, 3], [4, 5, 6]], max_new_tokens=6).ids
    assert gen.generate(torch.tensor([[1, 2, 3], [4, 5, 6]]), max_new_tokens=6).ids == lists
    assert gen.generate(torch.tensor([1, 2, 3]), max_new_tokens=6).ids == lists[:1]
    padded = torch.tensor([[0, 0, 1, 2, 3], [4, 5, 6, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert gen.generate(padded, max_new_tokens=6, attention_mask=mask).ids == lists
    with pytest.raises(GenerationError, match="integers"):
        gen.generate(torch.tensor([1.0, 2.0]))


def test_default_seed_is_fresh_and_recorded_so_a_sample_reproduces(gen):
    a = gen.generate([1, 2], max_new_tokens=12, do_sample=True)
    b = gen.generate([1, 2], max_new_tokens=12, do_sample=True)
    assert a.metrics.seed != b.metrics.seed and a.metrics.to_dict()["seed"] == a.metrics.seed
    again = gen.generate([1, 2], max_new_tokens=12, do_sample=True, seed=a.metrics.seed)
    assert again.ids == a.ids


def test_shorthand_maps_onto_decoder_and_processor_nodes(gen):
    from genloom.core.generation import apply_shorthand

    node, procs = apply_shorthand({"do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 1.0, "min_tokens_to_keep": 2},
                                  {"name": "greedy"}, [{"name": "top-p", "p": 0.5}, {"name": "repetition-penalty", "penalty": 1.5}])
    assert node == {"name": "sampling"}
    # top_p=1.0 removes the configured top-p; the others follow transformers' order
    assert procs == [{"name": "repetition-penalty", "penalty": 1.5}, {"name": "temperature", "temperature": 0.7}, {"name": "top-k", "k": 5, "min_tokens_to_keep": 2}]
    node, _ = apply_shorthand({"num_beams": 3, "length_penalty": 0.5, "early_stopping": True}, {"name": "sampling"}, [])
    assert node == {"name": "beam", "num_beams": 3, "length_penalty": 0.5, "early_stopping": True}
    with pytest.raises(GenerationError, match="do_sample"):
        apply_shorthand({"temperature": 0.5}, {"name": "greedy"}, [])
    with pytest.raises(GenerationError, match="beam"):
        apply_shorthand({"length_penalty": 0.5}, {"name": "sampling"}, [])


def test_shorthand_takes_effect_in_generate(gen):
    greedy = gen.generate([1, 2], max_new_tokens=10).ids
    # repetition_penalty=1.0 switches the configured penalty off: greedy output without it
    plain = gen.generate([1, 2], max_new_tokens=10, decoder="greedy", processors=[]).ids
    assert gen.generate([1, 2], max_new_tokens=10, repetition_penalty=1.0).ids == plain
    assert gen.generate([1, 2], max_new_tokens=10, no_repeat_ngram_size=1).ids[0] != greedy[0] or len(set(greedy[0])) == len(greedy[0])
    out = gen.generate([1, 2], max_new_tokens=10, no_repeat_ngram_size=1).ids[0]
    assert len(set(out + [1, 2])) == len(out) + 2  # no token repeats at all
    samples = gen.generate([1, 2], max_new_tokens=5, do_sample=True, top_k=1, num_return_sequences=3, seed=0).ids
    assert len(samples) == 3 and samples[0] == samples[1] == samples[2] == gen.generate([1, 2], max_new_tokens=5, top_k=1, do_sample=True, seed=5).ids[0]
    beams = gen.generate([[1, 2], [3]], max_new_tokens=4, num_beams=3, num_return_sequences=2, seed=0)
    assert len(beams.ids) == 4 and beams.ids[0] != beams.ids[1]
    scores = beams.metrics.extra["sequence_scores"]
    assert scores[0] >= scores[1] and scores[2] >= scores[3]


@pytest.mark.parametrize("decoder", ["sampling", "greedy", {"name": "beam", "num_beams": 2}])
def test_an_empty_prompt_is_a_clear_error(gen, decoder):
    for empty in ([], [[]], [[1], []], torch.zeros(2, 0, dtype=torch.long)):
        with pytest.raises(GenerationError, match="empty|no prompts"):
            gen.generate(empty, max_new_tokens=3, decoder=decoder)


def test_eos_token_id_shorthand_and_errors(gen):
    free = gen.generate([1, 2], max_new_tokens=8).ids[0]
    stopped = gen.generate([1, 2], max_new_tokens=8, eos_token_id=[free[3], 999]).ids[0]
    assert stopped == free[: free.index(free[3]) + 1]
    with pytest.raises(GenerationError, match="max_new_tokens"):
        gen.generate([1], max_new_tokens=-1)
    with pytest.raises(GenerationError, match="num_return_sequences"):
        gen.generate([1], num_return_sequences=0)


def test_an_unknown_keyword_lists_the_shorthand(gen):
    with pytest.raises(GenerationError, match="pad_token_id.*do_sample"):
        gen.generate([1, 2], max_new_tokens=2, pad_token_id=0)


def test_a_generation_that_cannot_fit_in_memory_is_refused_before_anything_is_allocated(gen, monkeypatch):
    from genloom.core import generation

    monkeypatch.setattr(generation, "available_memory", lambda device: 64 * 1024 * 1024)  # 64 MiB free
    with pytest.raises(GenerationError, match=r"generating 4000000 sequences \(2 prompt\(s\) x num_return_sequences 2000000\) needs about .* but 64.0 MiB"):
        gen.generate([[1, 2], [3]], max_new_tokens=8, num_return_sequences=2_000_000)
    assert len(gen.generate([[1, 2], [3]], max_new_tokens=4, num_return_sequences=3).ids) == 6  # what fits still runs
    per_row = generation.state_nbytes(gen.model.init_state(1, 2 + 4 + 16))
    assert per_row > 0


def test_a_run_pinned_plugin_hint_only_for_the_runs_own_component(tmp_path):
    """An unknown name the user just chose gets the list of allowed names, not 'install the
    distribution' of the run's (installed) plugin; a run whose own plugin is missing gets the hint."""
    import json

    import yaml

    from genloom.core import runio

    def run_dir(decoder_name):
        d = tmp_path / decoder_name
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump({**TINY, "decoder": {"name": decoder_name}}))
        pin = {"kind": "decoder", "name": decoder_name, "plugin": "some-plugin", "distribution": "genloom-some-plugin", "version": "1.2"}
        (d / "plugins.json").write_text(json.dumps({"components": {"decoder": pin}}))
        return d

    with pytest.raises(ConfigError) as err:
        runio.validate_run_config(run_dir("greedy"), ["decoder=nonexistent"])
    assert "unknown decoder 'nonexistent'" in str(err.value) and "install the distribution" not in str(err.value)
    with pytest.raises(ConfigError, match=r"built with decoder 'gone' from plugin 'some-plugin' \(distribution 'genloom-some-plugin' 1.2\).*install"):
        runio.validate_run_config(run_dir("gone"))


def test_progress_reports_tokens_done_up_to_the_total(gen):
    seen = []
    result = gen.generate([[1, 2], [3]], max_new_tokens=5, progress=lambda done, total: seen.append((done, total)))
    assert seen and all(t == 10 for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1][0] == 10
    assert len(seen) == 5 and sum(len(ids) for ids in result.ids) == 10  # one commit per token with greedy decoding


def test_callable_processors_with_a_named_decoder_and_a_model_deepcopy(gen):
    import copy

    banned = lambda logits, history: logits.index_fill(-1, torch.tensor([2]), float("-inf"))  # noqa: E731
    out = gen.generate([[1, 2]], max_new_tokens=4, decoder="greedy", processors=[banned]).ids
    assert 2 not in out[0] and gen.generate([[1, 2]], max_new_tokens=4, decoder="greedy", processors=[]).ids != out
    sampled = gen.generate([[1, 2]], max_new_tokens=4, decoder="sampling", processors=[banned], temperature=0.7, seed=3).ids
    assert 2 not in sampled[0]
    twin = copy.deepcopy(gen.model)  # the build context answers copy's probes with AttributeError
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), gen.model.state_dict().values()))


def test_a_head_that_names_its_decoders_refuses_others_before_decoding(gen):
    """``Head.decoded_by``: a head whose outputs are not next-token logits names the decoders that
    read it; any other decoder is refused with a message naming them (subclasses are accepted)."""
    from genloom.plugins.baseline.decoders import Beam

    head = gen.model.head
    head.decoded_by = (Beam,)
    try:
        with pytest.raises(GenerationError, match="decoded by Beam only"):
            gen.generate([[1, 2, 3]], max_new_tokens=2, decoder="greedy")
        assert gen.generate([[1, 2, 3]], max_new_tokens=2, decoder="beam").ids
    finally:
        del head.decoded_by
    assert gen.generate([[1, 2, 3]], max_new_tokens=2, decoder="greedy").ids
