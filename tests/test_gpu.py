"""CUDA-only code paths, each against its reference (``gpu`` mark; skipped cleanly without CUDA).

- attention backends ``sdpa``, ``flex`` (eager and under torch.compile) and ``xformers`` (when
  installed) give the reference's values on every core pattern, with padding, in fp32 and bf16;
- the static-cache decode step compiled in ``reduce-overhead`` mode (CUDA graphs) gives the dynamic
  path's tokens and is captured once;
- bf16-mixed training with a compiled backbone runs and learns; FSDP on one GPU trains and writes
  a full checkpoint.

The Triton selective scan and FlexAttention's backward have their CUDA tests beside their CPU ones
(tests/kernels/test_selective_scan.py, tests/plugins/block_diffusion/test_bd3_conformance.py).
``GENLOOM_GPU_TESTS_ON_CPU=1`` runs this file's logic on the CPU (no figure, only a check of the
tests themselves, as benchmarks/gpu/run.sh's dry run does).
"""

import json
import os

import pytest
import torch
import torch._dynamo

from genloom.core import kernels, static_decode
from genloom.core.generation import run
from genloom.core.pattern import AttentionPattern, block_causal, prefix, sliding_window
from genloom.testing import tiny_model

ON_CPU = os.environ.get("GENLOOM_GPU_TESTS_ON_CPU") == "1"
DEVICE = "cpu" if ON_CPU else "cuda"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not (ON_CPU or torch.cuda.is_available()), reason="needs CUDA")]

PATTERNS = [AttentionPattern("causal"), AttentionPattern("full"), prefix(5), block_causal(block_size=4), sliding_window(6)]
TOLERANCE = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def qkv(dtype, length=37):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, length, 64, generator=gen)
    k, v = (torch.randn(2, 4, length, 64, generator=gen) for _ in range(2))  # grouped-query: 2 query heads per key head
    valid = torch.ones(2, length, dtype=torch.bool)
    valid[1, :5] = False  # left padding on row 1
    pos = (valid.long().cumsum(1) - 1).clamp_min(0)
    move = lambda t: t.to(DEVICE)  # noqa: E731
    return [move(t).to(dtype) for t in (q, k, v)], {"q_pos": move(pos), "kv_pos": move(pos), "kv_valid": move(valid)}


def backends():
    names = ["sdpa", "flex"]
    reason = kernels.implementation("attention", "xformers").supports(device=torch.device(DEVICE), dtype=torch.float16)
    names.append(pytest.param("xformers", marks=pytest.mark.skipif(reason is not None, reason=str(reason))))
    return names


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.kind)
@pytest.mark.parametrize("backend", backends())
def test_attention_backends_equal_the_reference(backend, pattern, dtype):
    (q, k, v), ragged = qkv(dtype)
    for kw in ({}, ragged):
        with kernels.use("attention", "reference") as ref:
            expect = ref(q.float(), k.float(), v.float(), pattern=pattern, **kw)
        with kernels.use("attention", backend) as impl:
            got = impl(q, k, v, pattern=pattern, **kw)
        torch.testing.assert_close(got.float(), expect, **TOLERANCE[dtype])


@pytest.mark.skipif(ON_CPU, reason="inductor's CPU FlexAttention template cannot fuse the empty-row epilogue (torch 2.13)")
def test_flex_attention_compiled_equals_the_reference():
    (q, k, v), ragged = qkv(torch.float32, length=128)
    pattern = block_causal(block_size=16)
    flex = kernels.implementation("attention", "flex")
    compiled = torch.compile(lambda q, k, v: flex(q, k, v, pattern=pattern, **ragged))
    with kernels.use("attention", "reference") as ref:
        expect = ref(q, k, v, pattern=pattern, **ragged)
    torch.testing.assert_close(compiled(q, k, v), expect, **TOLERANCE[torch.float32])


TINY = {
    "tokenizer": {"name": "bytes"},
    "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
    "backbone": {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2},
    "objective": {"name": "next-token"},
}


def test_static_cache_cuda_graph_decode_equals_dynamic():
    torch.manual_seed(0)
    built = tiny_model(base=TINY)
    model = built.model.to(DEVICE).eval()
    prompts = [[5, 6, 7, 8, 9, 10], [40], [1, 2, 3]]
    decoder = lambda node: built.ctx.build("decoder", node)  # noqa: E731
    for node, kw in (("greedy", {}), ("sampling", {"seed": 2}), ({"name": "beam", "num_beams": 2}, {})):
        ref = run(model, prompts, decoder(node), max_new_tokens=24, **kw)
        got = run(model, prompts, decoder(node), max_new_tokens=24, cache="static", compile=True, **kw)
        assert got.ids == ref.ids, node
    assert static_decode.prepare(model, compile=True).compiled_calls > 0
    with torch._dynamo.config.patch(error_on_recompile=True):  # other prompts, same shapes: no new capture
        other = [[9, 9, 9], [1, 2], [77, 78, 79, 80]]
        assert run(model, other, decoder("greedy"), max_new_tokens=24, cache="static", compile=True).ids == run(model, other, decoder("greedy"), max_new_tokens=24).ids


TRAIN = {
    "seed": 0,
    "logger": "csv",
    "data": {"name": "pystdlib", "seq_len": 128, "batch_size": 8, "max_train_bytes": 300_000, "max_eval_bytes": 20_000},
    "tokenizer": {"name": "bytes"},
    "head": {"name": "lm"},
    "backbone": {"name": "transformer", "d_model": 128, "n_layers": 2, "n_heads": 4},
    "objective": {"name": "next-token"},
    "optimizer": {"lr": 3e-3, "warmup_steps": 5},
    "trainer": {"max_steps": 40, "val_every_steps": 40, "val_batches": 2, "checkpoint_every_steps": 40, "progress": False,
                "log_every_steps": 1, "accelerator": "cpu" if ON_CPU else "gpu", "precision": "bf16-mixed"},
}


def _losses(run_dir):
    import csv

    path = max((run_dir / "logs").rglob("metrics.csv"))
    return [float(r["train/loss"]) for r in csv.DictReader(open(path)) if r.get("train/loss")]


def test_bf16_mixed_compiled_training_learns(tmp_path):
    from genloom.core.training import train

    cfg = {**TRAIN, "trainer": {**TRAIN["trainer"], "compile": True}}
    result = train(cfg, run_dir=tmp_path / "bf16", generate=False)
    losses = _losses(tmp_path / "bf16")
    assert all(torch.isfinite(torch.tensor(losses))) and len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5  # it learned
    assert json.loads((result.run_dir / "metrics.json").read_text())["global_step"] == 40


@pytest.mark.skipif(ON_CPU, reason="FSDP needs NCCL")
def test_fsdp_on_one_gpu_trains_and_writes_a_full_checkpoint(tmp_path):
    from safetensors.torch import load_file

    from genloom.core.training import train

    cfg = {**TRAIN, "trainer": {**TRAIN["trainer"], "strategy": "fsdp", "devices": 1, "max_steps": 10, "val_every_steps": 10, "checkpoint_every_steps": 10}}
    train(cfg, run_dir=tmp_path / "fsdp", generate=False)
    losses = _losses(tmp_path / "fsdp")
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    weights = load_file(str(tmp_path / "fsdp" / "model.safetensors"))
    assert weights["backbone.layers.0.self_attn.q_proj.weight"].shape == (128, 128)  # gathered, not a shard


@pytest.mark.skipif(ON_CPU, reason="the CUDA generator state exists only on CUDA")
def test_checkpoint_rng_state_round_trips_the_cuda_generator():
    from genloom.core.training import get_rng_state, set_rng_state

    torch.cuda.init()
    state = get_rng_state()
    assert "cuda" in state
    expect = torch.rand(4, device="cuda")
    set_rng_state(state)
    torch.testing.assert_close(torch.rand(4, device="cuda"), expect)


def test_kernels_command_lists_the_device_backends():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "genloom", "kernels"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "attention" in out.stdout and "selective_scan" in out.stdout
