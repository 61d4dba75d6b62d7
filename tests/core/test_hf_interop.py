"""A tiny random Llama from transformers converts to genloom with identical logits and greedy output."""

import json
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import genloom
from genloom.core.hf import import_llama


@pytest.mark.parametrize("tied,kv_heads", [(False, 2), (True, 4)])
def test_llama_import_matches_transformers(tmp_path, tied, kv_heads):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=kv_heads, tie_word_embeddings=tied, max_position_embeddings=128, rms_norm_eps=1e-6)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    out = import_llama(tmp_path / "hf", tmp_path / "run")
    gen = genloom.load(out)
    ids = torch.randint(0, 97, (2, 13))
    with torch.no_grad():
        expect = hf(ids).logits
        got = gen.model(ids)
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-4)
    prompt = ids[0, :5].tolist()
    with torch.no_grad():
        hf_out = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)[0, 5:].tolist()
    ours = gen.generate(prompt, max_new_tokens=12, decoder="greedy").ids[0]
    assert ours == hf_out


def test_import_cli_and_generate_cli(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    r = subprocess.run([sys.executable, "-m", "genloom", "import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "genloom", "generate", str(tmp_path / "run"), "prompt=1 2 3", "max_new_tokens=5", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["tokens_generated"] == 5
    r = subprocess.run([sys.executable, "-m", "genloom", "import", "hf", str(tmp_path), "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2 and "config.json" in r.stderr
