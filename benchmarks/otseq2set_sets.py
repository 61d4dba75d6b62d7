"""Set prediction: OTSeq2Set's matching + OT objective against next-token training on the same pairs.

Train both from ``configs/otseq2set.yaml`` (the letter-set task: a source string's distinct letters,
listed in order of first appearance; any order is a correct set), e.g.::

    genloom train configs/otseq2set.yaml trainer.max_steps=2000 logger=none run_dir=runs/ots
    genloom train configs/otseq2set.yaml objective.name=next-token trainer.max_steps=2000 logger=none run_dir=runs/ots-ar

then ``python benchmarks/otseq2set_sets.py runs/ots runs/ots-ar``. The same two trainings with
``data.task=letter-set-shuffled`` give the paper's setting: each pair's letters in a random order,
so no order can be learnt from the source and only the set is well defined. Each run decodes the held-out
test sources greedily as one batch; printed per run: *set exact match* (the output, read as a set,
equals the target's set and repeats no letter), *order exact match* (the output equals the target
string, the one order next-token training is taught), and the mean output length against the
target's. Counts only: no timing.
"""

from __future__ import annotations

import argparse
import sys

import torch


def score(run: str, split: str = "test") -> dict:
    import genloom
    from genloom.core.model import build_component

    gen = genloom.load(run)
    data = build_component(gen.model.config.components["data"], gen.ctx)  # the run's data set, same splits
    test = data.load(split, gen.model.tokenizer, gen.ctx)
    sources = [s for s, _ in test.pairs]
    with torch.no_grad():
        result = gen.generate(source=sources, max_new_tokens=gen.ctx.target_length, seed=0, decoder="greedy")
    eos = gen.ctx.get("eos_id")
    n_set = n_order = 0
    out_len = tgt_len = 0
    for ids, (_, target) in zip(result.ids, test.pairs):
        ids = ids[: ids.index(eos)] if eos in ids else ids
        n_set += set(ids) == set(target) and len(ids) == len(set(ids))
        n_order += ids == list(target)
        out_len += len(ids)
        tgt_len += len(target)
    n = len(test.pairs)
    return {"run": run, "objective": gen.model.config.components["objective"].record.name, "pairs": n, "set_exact": n_set / n, "order_exact": n_order / n, "mean_length": out_len / n, "target_length": tgt_len / n}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| run | objective | set exact match | order exact match | mean output length (target) |")
    print("| --- | --- | --- | --- | --- |")
    for run in args.runs:
        r = score(run, args.split)
        objective = r["objective"]
        print(f"| {run} | {objective} | {r['set_exact']:.3f} | {r['order_exact']:.3f} | {r['mean_length']:.2f} ({r['target_length']:.2f}) |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
