"""Every sequence-to-sequence decoder of the `diffusion-nar-text` family on one embedded task, against
an autoregressive prefix LM of the same size: one table.

Task and recipe, the same for every model: bytes, a 2-layer d_model=64 transformer (4 heads) with
the plugin's head (the encoder-decoder row: 1 encoder + 1 decoder layer), reverse strings of 3-8 letters (data ``seq2seq``, task ``reverse``,
source_length 8, target_length 9; rows marked "3-4 letters" use source_length 4, target_length
5), AdamW steps of 64 pairs at a one-cycle learning rate of 3e-3 (``genloom.testing.train_briefly``),
seed 0, one thread. Evaluation: the 200 pairs of the held-out test split (sources whose text never
occurs in training), decoded as one batch with ``generate(source=..., seed=0)``; exact match of the
whole target and its end-of-sequence id; forward passes are backbone passes over the batch.

    python benchmarks/seq2seq_table.py                       # train (or load) everything, print the table
    python benchmarks/seq2seq_table.py --only ar,diffuseq    # some models
    python benchmarks/seq2seq_table.py --time 7              # + decode wall clock: 7 interleaved rounds
    python benchmarks/seq2seq_table.py --list                # the model keys

Trained weights are kept under ``--cache`` (default ``runs/seq2seq-table``, one file per model and
step count) so that a second call, e.g. the timing run on a quiet machine, only decodes. Exact
match and forward passes do not depend on the machine's load; the decode seconds do: ``--time``
runs every row once per round, the order of the rows alternating between rounds, and prints the
median and interquartile range per row, plus the ratio to the prefix LM's median. Quote them only
from a run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import pin_threads, spread  # noqa: E402
from genloom.core.generation import Generator  # noqa: E402
from genloom.testing import tiny_model, train_briefly  # noqa: E402


@dataclass
class Model:
    label: str
    head: dict
    objective: dict
    rows: list[tuple[str, dict]]
    """(decoding label, decoder node) per table row, all decoded from the same trained weights."""
    length: int = 8
    backbone: dict = field(default_factory=lambda: {"name": "transformer", "n_layers": 2})
    steps: int = 1000
    """Training steps unless ``--steps`` says otherwise."""
    report: Callable | None = None
    """Extra lines printed after the rows: ``report(built, sources, pairs) -> list[str]``."""


def _fretna_report(built, sources, pairs):
    result = Generator(built).generate(source=sources, max_new_tokens=built.ctx.target_length, decoder={"name": "fretna"}, seed=0)
    exact = _exact(result.ids, pairs, built)
    updates, erased = result.metrics.extra["source_updates"], result.metrics.extra["erasure"]
    return [f"FReTNA (same weights, source revealed one token at a time): exact {exact:.3f}, {result.metrics.forward_passes.get('target')} passes; "
            f"{sum(updates) / len(updates):.2f} source updates per source (= source tokens), {sum(erased) / len(erased):.2f} tokens erased per source"]


def _burst_report(built, sources, pairs):
    result = Generator(built).generate(source=sources, max_new_tokens=built.ctx.target_length, decoder={"name": "sigma-gpt-burst"}, seed=0)
    rounds = result.metrics.extra["rounds"]
    return [f"sigma-GPT rejection sampling (burst, rows one by one): exact {_exact(result.ids, pairs, built):.3f}, {2 * sum(rounds) / len(rounds):.2f} passes per source"]


def _first_positions_report(built, sources, pairs):
    """Which target position the learnt order policy fills first (greedy), over the test sources."""
    from genloom.core.pattern import FULL
    from genloom.plugins.lo_arm.head import generator_step

    S = built.ctx.source_length
    test = built.data.load("test", built.model.tokenizer, built.ctx)
    ids = torch.stack([test[i]["ids"] for i in range(len(test))])
    revealed = torch.zeros_like(ids, dtype=torch.bool)
    revealed[:, :S] = True
    with torch.no_grad():
        _, order_lp = generator_step(built.model, ids, revealed, FULL)
    counts = torch.bincount(order_lp.argmax(-1) - S, minlength=ids.shape[1] - S).tolist()
    return [f"LO-ARM first position chosen (target positions 0..{len(counts) - 1}, {len(test)} test sources): {counts}"]


def _diffusion_rows(name: str, steps=(1, 2, 5, 20, 50)) -> list[tuple[str, dict]]:
    return [(f"{k} step{'s' if k > 1 else ''}", {"name": name, "steps": k}) for k in steps]


MODELS: dict[str, Model] = {
    "ar": Model("AR prefix LM (`lm`, `next-token`)", {"name": "lm"}, {"name": "next-token"}, [("greedy, left to right", {"name": "greedy"})]),
    "nat-ctc": Model("[nat-ctc](catalogue/nat-ctc.md) (k = 2)", {"name": "ctc", "upsample_ratio": 2}, {"name": "nat-ctc"}, [("best path, one pass", {"name": "nat-ctc"})],
                     report=_fretna_report),
    "diffuseq": Model("[diffuseq](catalogue/diffuseq.md)", {"name": "embedding-diffusion", "embed_dim": 16}, {"name": "diffuseq", "steps": 1000}, _diffusion_rows("diffuseq")),
    "ar-diffusion": Model("[ar-diffusion-text](catalogue/ar-diffusion-text.md) (anchor 2N)", {"name": "embedding-diffusion", "embed_dim": 16}, {"name": "ar-diffusion", "steps": 1000},
                          _diffusion_rows("ar-diffusion")),
    "tess": Model("[tess](catalogue/tess.md) (k = 5, self-conditioning)", {"name": "simplex-diffusion"}, {"name": "tess", "steps": 1000}, _diffusion_rows("tess")),
    "sigma": Model("[sigma-gpt](catalogue/sigma-gpt.md) (random orders)", {"name": "sigma-gpt", "max_positions": 32}, {"name": "sigma-gpt"},
                   [("greedy, random order", {"name": "sigma-gpt", "greedy": True}), ("greedy, left to right", {"name": "sigma-gpt", "greedy": True, "order": "left-to-right"})],
                   report=_burst_report),
    "sigma-l2r": Model("sigma-gpt head, left-to-right training only", {"name": "sigma-gpt", "max_positions": 32}, {"name": "sigma-gpt", "order": "left-to-right"},
                       [("greedy, left to right", {"name": "sigma-gpt", "greedy": True, "order": "left-to-right"})]),
    "ilm": Model("[ilm](catalogue/ilm.md) (from an empty canvas)", {"name": "ilm"}, {"name": "ilm"}, [("greedy, one insertion per pass", {"name": "ilm", "greedy": True})]),
    "enconter": Model("[enconter](catalogue/enconter.md) (no constraints, empty canvas)", {"name": "enconter"}, {"name": "enconter"},
                      [("greedy, parallel insertions", {"name": "enconter", "greedy": True})]),
    "encdec": Model("encoder-decoder (`encoder-decoder` backbone, 1 + 1 layers)", {"name": "lm"}, {"name": "next-token"}, [("greedy, left to right", {"name": "greedy"})],
                    backbone={"name": "encoder-decoder", "encoder_layers": 1, "decoder_layers": 1}),
    "short-ar": Model("AR prefix LM, 3-4 letters", {"name": "lm"}, {"name": "next-token"}, [("greedy, left to right", {"name": "greedy"})], length=4, steps=600),
    "lo-arm": Model("[lo-arm](catalogue/lo-arm.md), 3-4 letters", {"name": "lo-arm"}, {"name": "lo-arm"}, [("greedy, learnt order", {"name": "lo-arm", "greedy": True})], length=4, steps=600,
                    report=_first_positions_report),
}


def build(model: Model):
    base = {
        "data": {"name": "seq2seq", "task": "reverse", "source_length": model.length, "target_length": model.length + 1, "max_length": model.length,
                 "train_size": 20000, "eval_size": 200},
        "tokenizer": {"name": "bytes"}, "head": model.head, "objective": model.objective,
        "backbone": {"d_model": 64, "n_heads": 4, **model.backbone},
    }
    return tiny_model(base=base, data=True, seed=0)


def trained(key: str, steps: int, cache: Path):
    """The model trained for ``steps`` (loaded from ``cache`` when it holds it; saved there otherwise)."""
    built = build(MODELS[key])
    path = cache / f"{key}-{steps}.pt"
    if path.exists():
        built.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        built.model.eval()
        return built, False
    train_briefly(built, steps, lr=3e-3)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(built.model.state_dict(), tmp)
    tmp.replace(path)
    return built, True


def _exact(ids, pairs, built) -> float:
    eos = built.ctx.get("eos_id")
    return sum(out == t + [eos] for out, (_, t) in zip(ids, pairs)) / len(pairs)


def decode(built, sources, node):
    with torch.no_grad():
        return Generator(built).generate(source=sources, max_new_tokens=built.ctx.target_length, decoder=node, seed=0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="training steps of every model (default: each model's own, 1000, or 600 for the 3-4 letter rows)")
    parser.add_argument("--only", default=",".join(MODELS), help="comma list of model keys (see --list)")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "seq2seq-table")
    parser.add_argument("--time", type=int, default=0, metavar="ROUNDS", help="also time decoding: ROUNDS interleaved rounds (quiet machine only)")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    if args.list:
        for key, model in MODELS.items():
            print(f"{key:14s} {model.label}")
        return
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    pin_threads(1)
    print("| model | steps | decoding | test exact match | forward passes (200 sources, one batch) |")
    print("| --- | --- | --- | --- | --- |")
    timed, notes = {}, []
    for key in keys:
        steps = args.steps or MODELS[key].steps
        built, fresh = trained(key, steps, args.cache)
        test = built.data.load("test", built.model.tokenizer, built.ctx)
        sources = [s for s, _ in test.pairs]
        for label, node in MODELS[key].rows:
            result = decode(built, sources, node)
            print(f"| {MODELS[key].label} | {steps} | {label} | {_exact(result.ids, test.pairs, built):.3f} | {result.metrics.forward_passes.get('target')} |", flush=True)
            timed[f"{key}: {label}"] = (lambda b=built, s=sources, n=node: decode(b, s, n).ids)
        if MODELS[key].report is not None:
            notes += MODELS[key].report(built, sources, test.pairs)
        if fresh:
            notes.append(f"{key}: trained now ({steps} steps), saved under {args.cache}")
    for line in notes:
        print(line)
    if args.time:
        secs = _time_rows(timed, args.time)
        reference = spread(secs[next(iter(secs))])["median"]
        print(f"\ndecode wall clock, {args.time} interleaved rounds, one thread (median [q1, q3] seconds; ratio to the first row's median)")
        for name, values in secs.items():
            s = spread(values)
            print(f"{name}: {s['median']:.3f} [{s['q1']:.3f}, {s['q3']:.3f}]  x{s['median'] / reference:.2f}")


def _time_rows(rows: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per decode of every row: one untimed warm-up each, then ``rounds`` rounds in which
    every row runs once, the order alternating between rounds (a change in load hits all alike)."""
    for fn in rows.values():
        fn()
    secs: dict[str, list[float]] = {name: [] for name in rows}
    names = list(rows)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            rows[name]()
            secs[name].append(time.perf_counter() - t0)
    return secs


if __name__ == "__main__":
    main()
