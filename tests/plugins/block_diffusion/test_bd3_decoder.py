"""The BD3-LM decoder: cached == full-recompute sampling, arbitrary lengths, block alignment, L' = 1 is AR."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from bd3_helpers import build  # noqa: E402

from genloom.core.generation import run  # noqa: E402
from genloom.core.pattern import block_causal, causal  # noqa: E402
from genloom.plugins.block_diffusion import BlockDiffusionDecoderConfig  # noqa: E402
from genloom.plugins.block_diffusion.sampling import denoise_block  # noqa: E402

PROMPTS = [[104, 101, 108, 108, 111], [1, 2], list(range(40, 48)), [7]]  # tails 1, 2, 0, 1 for L' = 4


def generate(built, *, cache, prompts=PROMPTS, max_new_tokens=11, seed=0, **options):
    decoder = built.ctx.build("decoder", {"name": "block-diffusion", "cache": cache, **options})
    return run(built.model, prompts, decoder, max_new_tokens=max_new_tokens, seed=seed)


@pytest.mark.parametrize("block_size,steps", [(4, None), (4, 2), (3, 5)])
def test_cached_sampling_equals_full_recompute(block_size, steps):
    built = build(block_size)
    cached = generate(built, cache=True, steps=steps)
    recomputed = generate(built, cache=False, steps=steps)
    assert cached.ids == recomputed.ids
    assert all(len(seq) == 11 for seq in cached.ids)
    # a different seed gives different samples (the comparison is not vacuous)
    assert generate(built, cache=True, steps=steps, seed=1).ids != cached.ids
    # the cache saves work: every denoiser call sees one block (plus the previous one) instead of the whole context
    assert cached.metrics.forward_passes["target"] <= recomputed.metrics.forward_passes["target"] + 1


@pytest.mark.parametrize("max_new_tokens", [1, 4, 13, 30])
def test_arbitrary_lengths(max_new_tokens):
    built = build(4)
    result = generate(built, cache=True, max_new_tokens=max_new_tokens)
    mask_id = built.ctx.mask_id
    assert [len(seq) for seq in result.ids] == [max_new_tokens] * len(PROMPTS)
    assert all(mask_id not in seq for seq in result.ids)
    assert result.metrics.tokens_generated == max_new_tokens * len(PROMPTS)


def test_first_block_completes_the_prompts_last_block():
    """Blocks are aligned to position 0 as in training: the first commit fills the prompt's partial block."""
    built = build(4)
    decoder = built.ctx.build("decoder", {"name": "block-diffusion"})
    commits = []
    original = decoder.verify

    def spy(session, proposal):
        commit = original(session, proposal)
        commits.append(commit.counts.tolist())
        return commit

    decoder.verify = spy
    run(built.model, PROMPTS, decoder, max_new_tokens=9, seed=0)
    assert commits[0] == [3, 2, 4, 3]  # 4 - (len(prompt) mod 4)
    assert all(c == [4, 4, 4, 4] for c in commits[1:-1])


def test_first_proposal_matches_explicit_denoising_of_the_prompt_tail():
    """One block by hand: the decoder's first proposal equals denoising against the full prefix, same draws."""
    built = build(4)
    model, mask_id = built.model, built.ctx.mask_id
    prompt = [5, 6, 7, 8, 9, 10]  # one whole block + a tail of 2
    block_ids = torch.tensor([[9, 10, mask_id, mask_id]])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        expected, _ = denoise_block(
            lambda block: model(torch.cat([torch.tensor([prompt[:4]]), block], 1), pattern=block_causal(4))[:, 4:],
            block_ids, mask_id=mask_id, steps=4, generator=generator, sample=model.head.sample,
        )
    result = generate(built, cache=True, prompts=[prompt], max_new_tokens=2)
    assert result.ids[0] == expected[0, 2:].tolist()


def test_block_size_one_is_ancestral_autoregressive_sampling():
    """L' = 1, one step: each token is drawn from p(x_b | x_{<b}) given by a mask query at position b."""
    built = build(1)
    model, mask_id = built.model, built.ctx.mask_id
    prompt = [3, 1, 4, 1, 5]
    result = generate(built, cache=True, prompts=[prompt], max_new_tokens=8, steps=1)
    generator = torch.Generator().manual_seed(0)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            logits = model(torch.tensor([seq + [mask_id]]), pattern=causal())[:, -1].float()
            logits[:, mask_id] = float("-inf")
            token = model.head.sample(logits[:, None], generator)[:, 0]
            torch.rand((1, 1), generator=generator)  # the reveal draw (probability 1 at the last step)
            seq.append(int(token))
    assert result.ids[0] == seq[len(prompt):]


def test_steps_and_forward_pass_accounting():
    """One denoiser pass per step that reveals something; the clean block rides along with the next block's first pass."""
    built = build(4)
    result = generate(built, cache=True, prompts=[[1, 2, 3, 4]], max_new_tokens=16, steps=4)
    passes = result.metrics.forward_passes["target"]
    assert 4 <= passes <= 16 + 1  # 4 blocks x at most 4 steps, + the prefill
    one_step = generate(built, cache=True, prompts=[[1, 2, 3, 4]], max_new_tokens=16, steps=1)
    assert one_step.metrics.forward_passes["target"] == 4 + 1  # one pass per block + prefill
    assert one_step.metrics.tokens_per_forward == pytest.approx(16 / 5)


def test_greedy_single_step_is_seed_free():
    """greedy takes the argmax when a position is revealed; with one step per block everything is revealed at once."""
    built = build(4)
    a = generate(built, cache=True, greedy=True, steps=1, seed=0)
    b = generate(built, cache=False, greedy=True, steps=1, seed=1)
    assert a.ids == b.ids


def test_decoder_takes_block_size_from_the_objective_and_validates():
    built = build(3)
    assert built.decoder.block_size == 3
    with pytest.raises(ValueError, match="steps"):
        BlockDiffusionDecoderConfig(steps=0)
    with pytest.raises(ValueError, match="block_size"):
        BlockDiffusionDecoderConfig(block_size=0)
