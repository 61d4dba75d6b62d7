"""Every text speculative decoder against plain decoding of the same trained target, in one run.

    python benchmarks/speculative_table.py                 # full: both tables, timing (run it on a quiet machine)
    python benchmarks/speculative_table.py --quick         # a smoke run: 2 prompts, 16 tokens, 1 repeat
    python benchmarks/speculative_table.py --no-timing     # counts only (load-independent)

The target and the draft are two quickstart runs (the same BPE-4096 tokenizer, trained on the
Python standard library's sources; each stops at max_steps or its time cap, whichever first)::

    genloom train configs/quickstart.yaml backbone.d_model=256 backbone.n_layers=4 backbone.n_heads=4 \\
        trainer.max_steps=400 trainer.max_time_minutes=6 logger=none --run-dir runs/spec-target --no-sample
    genloom train configs/quickstart.yaml backbone.d_model=64 backbone.n_layers=1 backbone.n_heads=2 \\
        trainer.max_steps=400 trainer.max_time_minutes=3 logger=none --run-dir runs/spec-draft --no-sample

(``genloom train runs/spec-target --resume trainer.max_time_minutes=20`` continues a run that hit
its time cap; the published counts are of a target trained 266 steps and a draft trained 267.)
Cost: the counts alone (``--no-timing``) are 40 decode calls and took 4.4 minutes on two cores
shared with other jobs; timing adds 132 calls (5 rounds; an estimated 4-6 minutes on two quiet cores, from the per-call
times seen under load). Prompts: ``--prompt-tokens`` BPE tokens from the middle of ``--prompts`` standard
library files; ``--new`` tokens each, no end-of-sequence stop.

Table 1 (``decoders``): each decoder that speeds up a text LM without weights of its own beyond a
draft model -- ``speculative`` (chain), ``stree`` (token tree; a transformer target verifies it
under the tree attention pattern), ``aded`` (tri-gram drafts, no draft model), ``sparse-to-dense``
(self-speculation with top-K sparse attention), ``duodecoding`` (multi-sequence drafts; its draft
thread switched off so the passes are counted, not overlapped), greedy, and ``speculative``,
``spectr``, ``stree`` sampling -- against plain greedy (or plain sampling) at batch 1 (each prompt
alone) and batch ``--batch`` (all prompts at once). Counts: target passes (prefill included),
tokens per target pass per sequence, the mean acceptance length (drafted tokens accepted per
round) and, for greedy, whether the tokens equal plain greedy decoding. Timing (unless
``--no-timing``): one thread; per batch size and baseline, the baseline and all its decoders run
round-robin (:mod:`timing`: one warm-up each, then ``--repeats`` rounds, the order alternating);
the speed-up is the median of the per-round ratios baseline seconds / decoder seconds, with its
min-max. A call at batch 1 decodes the prompts one after another.

Excluded, and why: ``blockwise-parallel``, ``mtp`` and ``recyclegpt`` need heads trained with
their own objective (the target here has none); ``lantern``, ``lantern-pp``, ``gsd`` and
``code-var`` are image-token decoders (relaxed or grouped acceptance over an image tokenizer's
codebook; ``tests/plugins/lantern_pp/measure_lantern_pp.py``); ``hybrid-decoding`` drafts whole
hypotheses of a source-conditioned model (``benchmarks/hybrid_decoding.py``);
``continuous-spec-decoding`` decodes real values; ``markov-cascade`` is its own backbone;
``apar`` needs a model trained to fork; ``flover`` is a serving engine
(``benchmarks/continuous_batching.py``).

Table 2 (``budget``): tree against chain speculation (``stree``) at an equal number of drafted
tokens per round (``--budgets``), same target and draft, greedy and sampling: mean acceptance
length and tokens per target pass (counts only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, pin_threads, spread  # noqa: E402

FILES = ("inspect.py", "argparse.py", "typing.py", "dataclasses.py", "functools.py", "pathlib.py", "subprocess.py", "tarfile.py")

#: Tree shapes with exactly ``budget`` drafted nodes, beside the chain of that length.
TREES = {4: [(2, 1), (4,)], 8: [(2, 1, 1, 1), (4, 1)], 16: [(2, 1, 1, 1, 1, 1, 1, 1), (4, 1, 1, 1)]}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="runs/spec-target")
    ap.add_argument("--draft", default="runs/spec-draft")
    ap.add_argument("--prompts", type=int, default=8, help="prompts (one per standard-library file); also the batch size of the batched rows")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (every decoder and its baseline once per round)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[4, 8, 16], choices=sorted(TREES))
    ap.add_argument("--tables", nargs="+", default=["decoders", "budget"], choices=["decoders", "budget"])
    ap.add_argument("--no-timing", action="store_true", help="counts only")
    ap.add_argument("--quick", action="store_true", help="2 prompts, 16 new tokens, 1 repeat, budget 4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts, args.new, args.repeats, args.budgets = 2, 16, 1, [4]
    return args


def prompts(gen, n: int, length: int) -> list[list[int]]:
    """``length`` tokens from the middle of each of ``n`` standard-library files."""
    root = Path(os.__file__).parent
    out = []
    for name in FILES[:n]:
        ids = gen.tokenizer.encode((root / name).read_text(encoding="utf-8"))
        mid = len(ids) // 2
        out.append(list(ids[mid:mid + length]))
    return out


def decoders(draft: str) -> dict[str, tuple[dict, str]]:
    """name -> (decoder node, baseline decoder name)."""
    return {
        "speculative, gamma 4, greedy": ({"name": "speculative", "draft": draft, "gamma": 4, "greedy": True}, "greedy"),
        "stree (3,2,1), greedy": ({"name": "stree", "draft": draft, "branching": [3, 2, 1], "greedy": True}, "greedy"),
        "stree (2,2,2,1), greedy": ({"name": "stree", "draft": draft, "branching": [2, 2, 2, 1], "greedy": True}, "greedy"),
        "aded (4,2,1)": ({"name": "aded", "branching": [4, 2, 1], "persist": False}, "greedy"),
        "sparse-to-dense, gamma 4, top-8": ({"name": "sparse-to-dense", "gamma": 4, "top_k": 8}, "greedy"),
        "duodecoding, gamma 4, top-3, greedy": ({"name": "duodecoding", "draft": draft, "gamma": 4, "top_k": 3, "greedy": True, "concurrent": False}, "greedy"),
        "speculative, gamma 4, sampling": ({"name": "speculative", "draft": draft, "gamma": 4, "greedy": False}, "sampling"),
        "spectr, gamma 4, 3 drafts": ({"name": "spectr", "draft": draft, "gamma": 4, "num_drafts": 3}, "sampling"),
        "stree (3,2,1), sampling": ({"name": "stree", "draft": draft, "branching": [3, 2, 1], "greedy": False}, "sampling"),
    }


def decode(model, batch_prompts, dec, new: int, batched: bool, seed: int):
    """Tokens and summed counts of one configuration: all prompts in one call, or each alone."""
    from genloom.core.generation import run

    groups = [batch_prompts] if batched else [[p] for p in batch_prompts]
    ids, passes, accepted, rounds = [], 0, 0, 0
    for i, group in enumerate(groups):
        out = run(model, group, dec, max_new_tokens=new, eos_id=[], seed=seed + i)
        ids += out.ids
        m = out.metrics
        passes += m.forward_passes.get("target", 0)
        accepted += sum(m.acceptance_lengths)
        rounds += len(m.acceptance_lengths)
    return ids, {"target_passes": passes, "tokens": sum(len(r) for r in ids), "sequences_per_pass": len(groups[0]),
                 "mean_acceptance_length": accepted / rounds if rounds else None}


def per_pass(counts) -> float:
    """Generated tokens per target pass per sequence (prefill included)."""
    return counts["tokens"] / (counts["target_passes"] * counts["sequences_per_pass"])


def table_decoders(args, gen, batch_prompts, out):
    model = gen.model.eval()
    base = {"greedy": gen.decoder("greedy"), "sampling": gen.decoder("sampling")}
    rows = []
    print("| decoder | batch | target passes | fewer passes than plain | tokens / target pass | mean acceptance length | same tokens as greedy | speed-up (median, min-max) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for batched in (False, True):
        B = len(batch_prompts) if batched else 1
        reference = {mode: decode(model, batch_prompts, dec, args.new, batched, args.seed) for mode, dec in base.items()}
        built, batch_rows = {}, []
        for name, (node, mode) in decoders(args.draft).items():
            try:
                dec = gen.decoder(node)
                ids, counts = decode(model, batch_prompts, dec, args.new, batched, args.seed)
            except Exception as exc:  # reported, the others still run
                print(f"| {name} | {B} | failed: {type(exc).__name__}: {str(exc)[:200]} |", flush=True)
                rows.append({"decoder": name, "batch": B, "error": f"{type(exc).__name__}: {exc}"})
                continue
            built[name] = (dec, mode)
            ref_ids, ref = reference[mode]
            batch_rows.append({"decoder": name, "batch": B, "baseline": mode, **counts, "tokens_per_pass": per_pass(counts),
                               "fewer_passes": ref["target_passes"] / counts["target_passes"], "baseline_passes": ref["target_passes"],
                               "same_tokens": (ids == ref_ids) if mode == "greedy" else None})
        if not args.no_timing:  # per baseline, the baseline and its decoders round-robin (timing.interleaved)
            for mode in base:
                names = [n for n, (_, m) in built.items() if m == mode]
                systems = {"baseline": lambda mode=mode: decode(model, batch_prompts, base[mode], args.new, batched, args.seed)[0]}
                systems.update({n: (lambda dec=built[n][0]: decode(model, batch_prompts, dec, args.new, batched, args.seed)[0]) for n in names})
                secs, _ = interleaved(systems, args.repeats)
                for row in batch_rows:
                    if row["decoder"] in names:
                        row["seconds"] = spread(secs[row["decoder"]])
                        row["baseline_seconds"] = spread(secs["baseline"])
                        row["speedup"] = spread([b / d for b, d in zip(secs["baseline"], secs[row["decoder"]])])
        for row in batch_rows:
            acc = f"{row['mean_acceptance_length']:.2f}" if row["mean_acceptance_length"] is not None else "-"
            same = {True: "yes", False: "no", None: "(sampling)"}[row["same_tokens"]]
            sp = f"{row['speedup']['median']:.2f}x ({row['speedup']['min']:.2f}-{row['speedup']['max']:.2f})" if "speedup" in row else "-"
            print(f"| {row['decoder']} | {B} | {row['target_passes']} | {row['fewer_passes']:.2f}x | {row['tokens_per_pass']:.2f} | {acc} | {same} | {sp} |", flush=True)
        print(f"| plain greedy | {B} | {reference['greedy'][1]['target_passes']} | 1.00x | {per_pass(reference['greedy'][1]):.2f} | - | yes | 1.00x |", flush=True)
        rows += batch_rows
    out["decoders"] = rows


def table_budget(args, gen, batch_prompts, out):
    model = gen.model.eval()
    rows = []
    print()
    print("| drafted tokens / round | shape | greedy: mean acceptance length | greedy: tokens / target pass | sampling: mean acceptance length | sampling: tokens / target pass |")
    print("| --- | --- | --- | --- | --- | --- |")
    for budget in args.budgets:
        for shape in [(1,) * budget, *TREES[budget]]:
            row = {"budget": budget, "branching": list(shape)}
            for mode in ("greedy", "sampling"):
                dec = gen.decoder({"name": "stree", "draft": args.draft, "branching": list(shape), "greedy": mode == "greedy"})
                _, counts = decode(model, batch_prompts, dec, args.new, True, args.seed)
                row[mode] = {**counts, "tokens_per_pass": per_pass(counts)}
            rows.append(row)
            label = "chain " + str(shape).replace(" ", "") if len(set(shape)) == 1 and shape[0] == 1 else "tree " + str(shape).replace(" ", "")
            g, s = row["greedy"], row["sampling"]
            print(f"| {budget} | {label} | {g['mean_acceptance_length']:.2f} | {g['tokens_per_pass']:.2f} | {s['mean_acceptance_length']:.2f} | {s['tokens_per_pass']:.2f} |", flush=True)
    out["budget"] = rows


def main(argv=None) -> int:
    import genloom

    args = parse(argv)
    pin_threads(1)
    t0 = time.perf_counter()
    gen = genloom.load(args.target)
    batch_prompts = prompts(gen, args.prompts, args.prompt_tokens)
    params = sum(p.numel() for p in gen.model.parameters())
    draft_params = sum(p.numel() for p in genloom.load(args.draft).model.parameters())
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "target_parameters": params, "draft_parameters": draft_params}
    print(f"target {args.target} ({params / 1e6:.2f}M parameters), draft {args.draft} ({draft_params / 1e6:.2f}M); {len(batch_prompts)} prompts of "
          f"{args.prompt_tokens} tokens, {args.new} new tokens each; 1 thread; timing: {'off' if args.no_timing else f'{args.repeats} interleaved repeats'}", flush=True)
    if "decoders" in args.tables:
        table_decoders(args, gen, batch_prompts, out)
    if "budget" in args.tables:
        table_budget(args, gen, batch_prompts, out)
    out["seconds"] = time.perf_counter() - t0
    print(f"\ntotal {out['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    bad = [r["decoder"] for r in out.get("decoders", []) if r.get("same_tokens") is False or "error" in r]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
