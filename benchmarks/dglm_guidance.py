"""DGLM attribute control: how often generated text has the attribute, unguided vs guided.

The attribute is "the 32-byte continuation contains ``self``" (the ``dglm`` decoder's default
``keyword``). The logistic-regression classifier is fitted exactly as the decoder fits it (the
run's encodings of 4000 standard-library continuations, seed 0) and its accuracy is measured on
2000 other continuations (seed 1). Prompts: ``--prompts`` 16-byte standard-library spans (seed 2).
For each guidance scale the same seed draws the proposals and the text (plain sampling at
temperature 1); reported per scale:

- proposal rate: the classifier's attribute rate (p > 1/2) of the sampled proposals ``z``;
- text rate (classifier): the same classifier on the *re-encoded* generated text;
- text rate (keyword): the fraction of generated continuations that contain the keyword;
- decoder NLL: the run's own mean per-byte NLL of the generated text given ``[soft(z) | prompt]``
  (how well the text follows its proposal).

    python benchmarks/dglm_guidance.py runs/dglm [--prompts 256] [--scales 0 1 2 4 8] [--target 0]
"""

from __future__ import annotations

import argparse

import torch

from genloom.core.generation import load, run
from genloom.plugins.dglm.classifier import keyword_labels, stdlib_continuations
from genloom.plugins.dglm.decoder import encode_texts
from genloom.plugins.dglm.model import run_decoder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--keyword", default="self")
    parser.add_argument("--target", type=int, default=1, choices=(0, 1), help="steer towards (1) or away from (0) the attribute")
    parser.add_argument("--length", type=int, default=32, help="continuation bytes (the training continuation length)")
    parser.add_argument("--prefix", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)

    gen = load(args.run_dir)
    model = gen.model.eval()
    decoder = gen.decoder(keyword=args.keyword)
    clf = decoder.fit_classifier(model, args.length)
    held = stdlib_continuations(args.length, 2000, seed=1)
    held_labels = keyword_labels(held, args.keyword)
    held_acc = clf.accuracy(encode_texts(model, held).double(), held_labels)
    print(f"classifier: train accuracy {decoder.classifier_accuracy:.3f}, held-out accuracy {held_acc:.3f}, "
          f"held-out base rate {held_labels.double().mean():.3f} (majority-class accuracy {max(held_labels.double().mean(), 1 - held_labels.double().mean()):.3f})")
    prompts = [list(model.tokenizer.encode(p)) for p in stdlib_continuations(args.prefix, args.prompts, seed=2)]

    print("| guidance scale | proposal rate | text rate (classifier) | text rate (keyword) | decoder NLL (nats/byte) |")
    print("| --- | --- | --- | --- | --- |")
    for scale in args.scales:
        dec = gen.decoder(guidance_scale=scale, keyword=args.keyword, target=args.target)
        dec.classifier = clf
        captured = {}
        original = dec.proposal
        dec.proposal = lambda session: captured.setdefault("z", original(session))
        out = run(model, prompts, dec, max_new_tokens=args.length, seed=0)
        z = captured["z"].double()
        tok = model.tokenizer
        texts = [tok.decode_bytes(ids) if hasattr(tok, "decode_bytes") else str(tok.decode(ids)).encode() for ids in out.ids]
        text_z = encode_texts(model, texts).double()
        nll = decoder_nll(model, captured["z"], prompts, out.ids)
        print(f"| {scale:g} | {(clf.probability(z) > 0.5).double().mean():.3f} | {(clf.probability(text_z) > 0.5).double().mean():.3f} | "
              f"{keyword_labels(texts, args.keyword).double().mean():.3f} | {nll:.3f} |")


@torch.no_grad()
def decoder_nll(model, z, prompts, generated) -> float:
    """Mean per-token NLL of the generated ids under the decoder given ``[soft(z) | prompt]`` (equal-length prompts)."""
    backbone = model.backbone
    total, count = 0.0, 0
    for b, (p, g) in enumerate(zip(prompts, generated)):
        if not g:
            continue
        ids = torch.tensor([p + g])
        h, _ = backbone.decoder_inputs(z[b : b + 1], model.head.embed(ids))
        logits = run_decoder(model, h)[:, backbone.prompt_vectors + len(p) - 1 : -1]
        total += float(model.head.token_nll(logits, ids[:, len(p) :]).sum())
        count += len(g)
    return total / max(count, 1)


if __name__ == "__main__":
    main()
