"""ASP's constrained decoding against the same decoding without the constraint, from UNTRAINED models.

Every output of a random model is sampled (no training, so nothing but the constraint can make it
valid): for each seed, the first ``--examples`` test-split windows of the ``asp-code`` data set are
decoded by sampling, with the ``asp`` head and decoder (``constrained`` true / false), and with a
flat ``lm`` head sampled with and without the ``asp-constraints`` processor. Prints the share of
outputs that copy their input exactly, and the share that are valid structures (copy exact,
brackets balanced and nested, links to earlier spans), over ``--seeds`` model seeds.

    python benchmarks/asp_validity.py --seeds 5 --examples 40
"""

from __future__ import annotations

import argparse

from genloom.core.generation import Generator
from genloom.plugins.asp_structured.actions import InvalidActions, copied, decode
from genloom.testing import tiny_model


def base(head, objective, decoder):
    return {
        "data": {"name": "asp-code", "source_length": 64, "target_length": 112, "train_size": 200, "eval_size": 200},
        "tokenizer": {"name": "asp-bytes"}, "head": head, "objective": objective, "decoder": decoder,
        "backbone": {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4},
    }


SETTINGS = {
    "asp head, asp decoder, constrained": (base({"name": "asp"}, {"name": "asp"}, {"name": "asp", "greedy": False}), None),
    "asp head, asp decoder, unconstrained": (base({"name": "asp"}, {"name": "asp"}, {"name": "asp", "greedy": False, "constrained": False}), None),
    "flat lm head, sampling + asp-constraints": (base({"name": "lm"}, {"name": "next-token"}, {"name": "sampling"}), [{"name": "asp-constraints"}]),
    "flat lm head, sampling": (base({"name": "lm"}, {"name": "next-token"}, {"name": "sampling"}), []),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--examples", type=int, default=40)
    args = parser.parse_args()
    print("| setting | outputs | input copied exactly | valid structure |")
    print("| --- | --- | --- | --- |")
    for name, (cfg, processors) in SETTINGS.items():
        total = same = valid = 0
        for seed in range(args.seeds):
            built = tiny_model(base=cfg, data=True, seed=seed)
            layout = built.model.tokenizer.layout
            examples = built.data.examples("test", layout)[: args.examples]
            sources = [list(text.encode()) for text, _ in examples]
            kwargs = {} if processors is None else {"processors": processors}
            res = Generator(built).generate(source=sources, max_new_tokens=112, seed=seed, **kwargs)
            for src, ids in zip(sources, res.ids):
                total += 1
                same += copied(ids, layout) == src
                try:
                    decode(ids, src, layout)
                    valid += 1
                except InvalidActions:
                    pass
        print(f"| {name} | {total} | {same / total:.3f} | {valid / total:.3f} |")


if __name__ == "__main__":
    main()
