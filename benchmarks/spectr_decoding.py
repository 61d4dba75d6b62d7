"""Measure SpecTr against speculative sampling and plain decoding on trained genloom runs.

    python benchmarks/spectr_decoding.py TARGET_RUN DRAFT_RUN [--tokens 128] [--repeats 2]
    python benchmarks/spectr_decoding.py --lp        # K-SEQ vs the optimal transport LP

Every decoder is built through the registry (``sampling``, ``greedy``, ``speculative``,
``spectr``) with the run's logits processors; prompts are decoded one at a time (batch 1, the
latency setting of the papers). Printed per decoder: mean acceptance length (accepted drafts per
round), tokens per target forward pass (prefill included) and wall-clock time relative to plain
decoding (the best of ``--repeats`` runs, decoders interleaved to share the machine's load).
The LP table needs scipy (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import math
import time

PROMPTS = ["def ", "import os\n", "class ", "    return ", "for i in range(", "if __name__ == ", "    def __init__(self", "# "]


def decoders(draft_run: str, gamma: int):
    yield "sampling", {"name": "sampling"}
    yield "speculative", {"name": "speculative", "draft": draft_run, "gamma": gamma}
    for k in (2, 4):
        yield f"spectr k={k}", {"name": "spectr", "draft": draft_run, "gamma": gamma, "num_drafts": k}
    yield "greedy", {"name": "greedy"}
    yield "speculative greedy", {"name": "speculative", "draft": draft_run, "gamma": gamma, "greedy": True}


def measure(target_run: str, draft_run: str, tokens: int, gamma: int, repeats: int) -> list[dict]:
    import torch

    import genloom
    from genloom.core.generation import run

    torch.set_num_threads(1)
    gen = genloom.load(target_run)
    rows = {}
    built = {name: gen.decoder(node) for name, node in decoders(draft_run, gamma)}
    prompts = [gen.encode(p) for p in PROMPTS]
    for repeat in range(repeats):
        for name, dec in built.items():
            totals = rows.setdefault(name, {"seconds": [], "tokens": 0, "target": 0, "accepted": [], "draft": 0})
            start = time.perf_counter()
            for i, ids in enumerate(prompts):
                out = run(gen.model, [list(ids)], dec, max_new_tokens=tokens, processors=gen.built.processors, seed=1000 * repeat + i)
                if repeat == 0:
                    m = out.metrics
                    totals["tokens"] += m.tokens_generated
                    totals["target"] += m.forward_passes.get("target", 0)
                    totals["draft"] += m.forward_passes.get("draft", 0)
                    totals["accepted"].extend(m.acceptance_lengths)
            totals["seconds"].append(time.perf_counter() - start)
    plain = {"sampling": min(rows["sampling"]["seconds"]), "greedy": min(rows["greedy"]["seconds"])}
    report = []
    for name, r in rows.items():
        base = plain["greedy" if "greedy" in name else "sampling"]
        accepted = r["accepted"]
        report.append({
            "decoder": name,
            "mean_acceptance_length": sum(accepted) / len(accepted) if accepted else None,
            "tokens_per_target_pass": r["tokens"] / r["target"],
            "draft_passes_per_token": r["draft"] / r["tokens"],
            "seconds": min(r["seconds"]),
            "speedup_vs_plain": base / min(r["seconds"]),
        })
    return report


def lp_table(seeds=range(5), vocab: int = 4, ks=(2, 3, 4)) -> list[dict]:
    import torch

    from genloom.plugins.spectr.optimal_transport import optimal_acceptance
    from genloom.plugins.spectr.sampling import kseq_acceptance

    rows = []
    for seed in seeds:
        torch.manual_seed(seed)
        dist = torch.distributions.Dirichlet(torch.full((vocab,), 0.7))
        p, q = dist.sample().double(), dist.sample().double()
        p, q = p / p.sum(), q / q.sum()
        single = float(torch.minimum(p, q).sum())
        for k in ks:
            kseq = float(kseq_acceptance(p, q, k))
            optimum = optimal_acceptance(p.numpy(), q.numpy(), k)
            rows.append({"seed": seed, "k": k, "speculative": single, "kseq": kseq, "optimum": optimum, "kseq/optimum": kseq / optimum})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/spectr_decoding.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?")
    parser.add_argument("draft", nargs="?")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lp", action="store_true", help="print the K-SEQ vs LP-optimum table instead")
    args = parser.parse_args(argv)
    if args.lp:
        rows = lp_table()
        print("| seed | k | speculative (1 - TV) | K-SEQ | LP optimum | K-SEQ / optimum | bound 1-(1-1/k)^k |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            bound = 1 - (1 - 1 / r["k"]) ** r["k"]
            print(f"| {r['seed']} | {r['k']} | {r['speculative']:.4f} | {r['kseq']:.4f} | {r['optimum']:.4f} | {r['kseq/optimum']:.4f} | {bound:.4f} |")
        print(f"(1 - 1/e = {1 - 1 / math.e:.4f})")
        return 0
    if not (args.target and args.draft):
        parser.error("TARGET_RUN and DRAFT_RUN are required (or --lp)")
    rows = measure(args.target, args.draft, args.tokens, args.gamma, args.repeats)
    print("| decoder | mean acceptance length | tokens / target pass | draft passes / token | seconds | wall-clock speed-up vs plain |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        acc = f"{r['mean_acceptance_length']:.2f}" if r["mean_acceptance_length"] is not None else "-"
        print(f"| {r['decoder']} | {acc} | {r['tokens_per_target_pass']:.2f} | {r['draft_passes_per_token']:.2f} | {r['seconds']:.2f} | {r['speedup_vs_plain']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
