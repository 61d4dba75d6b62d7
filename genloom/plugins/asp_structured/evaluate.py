"""Held-out evaluation: span and link F1 of decoded structures against the exact ones.

A span counts as correct when its (start, end, label) is in the gold structure; a link when its
(source span, target span, relation) is. Precision, recall and F1 are micro-averaged over the
split. :func:`evaluate_examples` decodes a list of (text, structure) examples with a generator and
any decoder node; ``genloom evaluate RUN`` calls :func:`evaluate_command` (the objective's
``evaluate_run``), which decodes the run's test split with the constrained greedy ``asp`` decoder.
"""

from __future__ import annotations

import json
from pathlib import Path

from genloom.core.errors import ConfigError

from .actions import InvalidActions, decode

OPTIONS = ("split", "max_examples", "batch_size", "out", "overwrite")


def f1(predicted: set, gold: set) -> tuple[int, int, int]:
    """(true positives, predicted, gold) counts."""
    return len(predicted & gold), len(predicted), len(gold)


def scores(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def evaluate_examples(gen, examples, *, decoder=None, processors=None, batch_size: int = 64, seed: int = 0) -> dict:
    """Decode each example's text and compare the structure with its gold one. Returns span and
    link precision/recall/F1, the fraction of outputs that are valid structures copying their input
    exactly (``valid``), and the fraction decoded exactly (``exact``)."""
    layout = gen.tokenizer.layout
    decoder = decoder or {"name": "asp", "greedy": True}
    counts = {"span": [0, 0, 0], "link": [0, 0, 0]}
    valid = exact = 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        sources = [list(text.encode()) for text, _ in chunk]
        need = int(gen.ctx.get("target_length") or max(len(s) for s in sources) * 3 + 2 * layout.max_spans + 1)
        kwargs = {"processors": processors} if processors is not None else {}
        res = gen.generate(source=sources, max_new_tokens=need, decoder=decoder, seed=seed, **kwargs)
        for (text, gold), src, ids in zip(chunk, sources, res.ids):
            try:
                pred = decode(ids, src, layout)
            except InvalidActions:
                pred = None
            if pred is None:
                pred_spans, pred_links = set(), set()
            else:
                valid += 1
                exact += pred == gold
                pred_spans, pred_links = set(pred.spans), set(pred.links)
            for key, p, g in (("span", pred_spans, set(gold.spans)), ("link", pred_links, set(gold.links))):
                c = f1(p, g)
                counts[key] = [a + b for a, b in zip(counts[key], c)]
    n = max(len(examples), 1)
    return {"examples": len(examples), "valid": valid / n, "exact": exact / n,
            "span": scores(*counts["span"]), "link": scores(*counts["link"])}


def evaluate_command(gen, options: dict) -> str:
    unknown = [k for k in options if k not in OPTIONS]
    if unknown:
        raise ConfigError(f"unknown evaluate option(s) {', '.join(unknown)} (allowed: {', '.join(OPTIONS)})")
    split = str(options.get("split", "test"))
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be one of train, val, test, got {split!r}", path="split")
    ints = {}
    for key, default in (("max_examples", 0), ("batch_size", 64)):
        try:
            ints[key] = int(options.get(key, default))
        except ValueError:
            raise ConfigError(f"{key} must be an integer, got {options[key]!r}", path=key) from None
        if ints[key] < (0 if key == "max_examples" else 1):
            raise ConfigError(f"{key} must be >= {0 if key == 'max_examples' else 1}, got {ints[key]}", path=key)
    out = options.get("out")
    if out is not None and Path(out).exists() and str(options.get("overwrite", "false")).lower() != "true":
        raise ConfigError(f"'{out}' already exists; pass overwrite=true to replace it, or choose another out=", path="out")
    spec = gen.model.config.components.get("data")
    if spec is None:
        raise ConfigError("the run's config has no data node", path="data")
    from genloom.core.model import build_component

    examples = build_component(spec, gen.ctx).examples(split, gen.tokenizer.layout)
    if ints["max_examples"]:
        examples = examples[: ints["max_examples"]]
    result = evaluate_examples(gen, examples, batch_size=ints["batch_size"])
    lines = [f"split '{split}': {result['examples']} examples, constrained greedy asp decoding", "",
             "| figure | precision | recall | F1 |", "| --- | --- | --- | --- |"]
    for key in ("span", "link"):
        s = result[key]
        lines.append(f"| {key} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} |")
    lines += ["", f"valid outputs: {result['valid']:.4f}, exact structures: {result['exact']:.4f}"]
    if out is not None:
        from genloom.core import runio

        runio.write_text(Path(out), json.dumps({"split": split, **result}, indent=2))
        lines.append(f"wrote {out}")
    return "\n".join(lines)
