"""Decoding cost of the recurrent backbones against a transformer as the context grows.

    python benchmarks/recurrent_decode.py                       # contexts 256 1024 4096, 32 new tokens
    python benchmarks/recurrent_decode.py --contexts 512 8192 --only mamba,gateloop --repeats 7

Every backbone is built from its shipped config (``configs/<name>.yaml``: d_model 64, 2 layers)
with untrained weights over 256 byte ids; the transformer row is a 2-layer, d_model 64, 4-head
``transformer``. For each context length L, a batch-1 prompt of L random bytes is prefilled into
a fresh incremental state, then ``--new`` tokens are decoded one at a time (each token is the
argmax of the previous step, so every system does the same work). Two figures per cell:

- **state bytes**: the bytes of every tensor the state holds after the last decoding step
  (allocated, so a growing KV cache counts its capacity; a recurrent state's record of its last
  advance, kept for rollback, is one token by then). This does not depend on machine load;
- **ms per token**: the median wall-clock time of one decoding step over ``--repeats`` rounds in
  which all systems run back to back, the order alternating between rounds (threads pinned, 1 by
  default), with the interquartile range. Quote it only from a quiet machine.

The point of these models is the first figure staying flat (and the second with it) while the
transformer's grows linearly in L.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import pin_threads, spread  # noqa: E402

from genloom.core.generation import state_nbytes  # noqa: E402
from genloom.testing import tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["transformer", "mamba", "vir-retention", "gateloop", "gss", "laughing-hyena", "laughing-hyena-modal", "mega", "futurefill", "aaren", "smr"]
TRANSFORMER = {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4}


def backbone_config(name: str) -> dict:
    if name == "transformer":
        return dict(TRANSFORMER)
    if name == "laughing-hyena-modal":  # the distilled form: modal filters, an O(order) recurrent state
        return {**backbone_config("laughing-hyena"), "filter": "modal"}
    return yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())["backbone"]


def build(name: str, max_len: int):
    backbone = backbone_config(name)
    if name.startswith("laughing-hyena"):
        backbone["max_length"] = max(backbone.get("max_length", 0), max_len)
    if name == "futurefill":
        backbone["filter_length"] = max(backbone.get("filter_length", 0), max_len)
    config = {"tokenizer": {"name": "ids", "vocab_size": 256}, "head": {"name": "lm"}, "backbone": backbone, "objective": {"name": "next-token"}}
    model = tiny_model(base=config).model
    model.eval()
    return model


@torch.no_grad()
def decode(model, prompt: torch.Tensor, new: int) -> tuple[float, int, list[int]]:
    """Prefill ``prompt``, then decode ``new`` tokens greedily; seconds per token, state bytes, tokens."""
    state = model.init_state(1, capacity=prompt.shape[1] + new + 1)
    logits = model(prompt, state=state)
    token = logits[:, -1].argmax(-1, keepdim=True)
    out = []
    start = time.perf_counter()
    for _ in range(new):
        logits = model(token, state=state)
        token = logits[:, -1].argmax(-1, keepdim=True)
        out.append(int(token))
    seconds = (time.perf_counter() - start) / new
    return seconds, state_nbytes(state), out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated backbone names (default: all)")
    args = parser.parse_args(argv)
    pin_threads(args.threads)
    names = [n for n in MODELS if not args.only or n in args.only.split(",")]
    torch.manual_seed(0)
    models, params = {}, {}
    for name in names:
        try:
            models[name] = build(name, max(args.contexts) + args.new + 1)
            params[name] = sum(p.numel() for p in models[name].parameters())
        except Exception as exc:  # a backbone that cannot be built at this size is reported, not fatal
            print(f"{name}: not built ({type(exc).__name__}: {exc})", file=sys.stderr)
    cells: dict[tuple[str, int], dict] = {}
    for L in args.contexts:
        prompt = torch.randint(0, 256, (1, L), generator=torch.Generator().manual_seed(L))
        order = list(models)
        times: dict[str, list[float]] = {n: [] for n in order}
        for r in range(args.repeats + 1):  # round 0 warms up and is not timed
            for name in (order if r % 2 == 0 else order[::-1]):
                try:
                    secs, nbytes, _ = decode(models[name], prompt, args.new)
                except Exception as exc:
                    cells[(name, L)] = {"error": f"{type(exc).__name__}: {exc}"[:60]}
                    continue
                cells.setdefault((name, L), {})["bytes"] = nbytes
                if r:
                    times[name].append(secs)
        for name in order:
            if times[name]:
                cells[(name, L)]["ms"] = spread([1000 * t for t in times[name]])
    head = " | ".join(f"L={L}: state KiB | L={L}: ms/token (IQR)" for L in args.contexts)
    print(f"| backbone | parameters | {head} |")
    print("| --- | --- |" + " --- | --- |" * len(args.contexts))
    for name in models:
        row = [name, f"{params[name] / 1e3:.0f}k"]
        for L in args.contexts:
            cell = cells.get((name, L), {})
            if "error" in cell:
                row += [cell["error"], ""]
                continue
            row.append(f"{cell['bytes'] / 1024:.1f}")
            ms = cell.get("ms")
            row.append(f"{ms['median']:.2f} ({ms['q1']:.2f}-{ms['q3']:.2f})" if ms else "")
        print("| " + " | ".join(row) + " |")
    print(f"\n{args.new} new tokens after each prefill, batch 1, {args.threads} thread(s), {args.repeats} interleaved repeats.")


if __name__ == "__main__":
    main()
