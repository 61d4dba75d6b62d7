"""Cascaded decoding vs exact Viterbi and greedy decoding on a small random Markov transformer.

For ``--prompts`` random prompts, decodes ``--length`` tokens with: exact Viterbi of the order-m
CRF (the cascade with no pruning), the cascade pruned to K states per position for each K in
``--keep``, and greedy decoding. Prints load-independent figures: how often each returns the exact
Viterbi sequence, the mean score gap to it (log-probability, nats), how often the final order's
Viterbi path survived every pruning stage, states in the last stage's lattice per position, and
contexts scored by the model per sequence.

    python benchmarks/markov_cascade.py [--vocab 8] [--order 2] [--length 8] [--prompts 50] [--keep 1 2 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import random

import torch


def main(argv=None) -> int:
    import genloom
    from genloom.core.generation import run
    from genloom.plugins.markov_cascade import cascade as C

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=8)
    ap.add_argument("--order", type=int, default=2)
    ap.add_argument("--length", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--keep", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--init-std", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    config = {"seed": args.seed, "tokenizer": {"name": "ids", "vocab_size": args.vocab}, "head": {"name": "lm", "init_std": args.init_std, "tie_weights": False},
              "backbone": {"name": "markov-transformer", "order": args.order, "d_model": 32, "n_layers": 2, "n_heads": 4}, "objective": {"name": "next-token"}}
    gen = genloom.load(config)
    model = gen.model.double().eval()
    contexts_scored = [0]

    def score(contexts, valid):
        contexts_scored[0] += contexts.shape[0]
        with torch.no_grad():
            return model(contexts, valid=valid)[:, -1].double().log_softmax(-1)

    rng = random.Random(args.seed)
    prompts = [[rng.randrange(args.vocab) for _ in range(rng.randint(1, 4))] for _ in range(args.prompts)]
    rows = {}
    exact = []
    for p in prompts:
        contexts_scored[0] = 0
        e = C.cascade(lambda k: score, p, args.vocab, args.length, args.order, None, parallel=False)
        exact.append(e)
        rows.setdefault("exact Viterbi (no pruning)", []).append((True, 0.0, True, e.stages[-1]["states"][-1], contexts_scored[0]))
        for K in args.keep:
            contexts_scored[0] = 0
            r = C.cascade(lambda k: score, p, args.vocab, args.length, args.order, K, parallel=False)
            final = e.stages[-1]["path"]
            survived = r.stages[-1]["path"] == final
            rows.setdefault(f"cascade, {K} states kept", []).append((r.tokens == e.tokens, e.score - r.score, survived, r.stages[-1]["states"][-1], contexts_scored[0]))
        g = run(model, [p], gen.decoder("greedy"), max_new_tokens=args.length).ids[0]
        with torch.no_grad():
            full = torch.tensor([p + g])
            gs = float(model(full).double().log_softmax(-1)[0, len(p) - 1:-1].gather(1, torch.tensor(g)[:, None]).sum())
        rows.setdefault("greedy", []).append((g == e.tokens, e.score - gs, g == e.tokens, 1, args.length))
    print(f"{args.prompts} prompts, {args.length} tokens each, vocabulary {args.vocab}, order {args.order} (exact lattice: {args.vocab ** args.order} states per position)")
    print("| decoder | equals exact Viterbi | mean score gap (nats) | final Viterbi path kept | last-stage states per position | contexts scored per sequence |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, vals in rows.items():
        n = len(vals)
        print(f"| {name} | {sum(v[0] for v in vals)}/{n} | {sum(v[1] for v in vals) / n:.4f} | {sum(v[2] for v in vals)}/{n} | "
              f"{sum(v[3] for v in vals) / n:.1f} | {sum(v[4] for v in vals) / n:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
