"""Train configs/var.yaml, write docs/images/var_samples.png and print the measured figures.

    python -m genloom.plugins.var.make_samples [--run-dir runs/var] [--reuse] [key=value ...]

Figures: the tokenizer's held-out reconstruction error as scales are added, the transformer's
validation loss per scale, the decoder's passes and time, and how often a logistic-regression
classifier fitted on real digits recognises the class a sample was conditioned on (with and
without classifier-free guidance).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def held_out_reconstruction(tokenizer, images: torch.Tensor) -> list[float]:
    with torch.no_grad():
        ids = tokenizer.encode(images)
        return [F.mse_loss(tokenizer.decode_ids(ids[:k]), images).item() for k in range(1, len(ids) + 1)]


def class_accuracy(gen, classifier, per_class: int, cfg_scale: float, seed: int) -> tuple[float, dict]:
    num_classes = int(gen.ctx.num_classes)
    labels = [c for _ in range(per_class) for c in range(num_classes)]
    decoder = {"name": "next-scale", "cfg_scale": cfg_scale}
    result = gen.generate([[c] for c in labels], max_new_tokens=gen.tokenizer.seq_len, decoder=decoder, seed=seed)
    images = torch.stack([gen.tokenizer.decode(ids) for ids in result.ids])
    predicted = classifier.predict(images.flatten(1).clamp(-1, 1).numpy())
    return float((predicted == torch.tensor(labels).numpy()).mean()), result.metrics.to_dict()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/var.yaml")
    parser.add_argument("--run-dir", default="runs/var")
    parser.add_argument("--out", default="docs/images/var_samples.png")
    parser.add_argument("--reuse", action="store_true", help="use the trained run in --run-dir instead of training again")
    parser.add_argument("--per-class", type=int, default=20, help="samples per class for the classifier check")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    import genloom
    from genloom.core.training import train
    from genloom.plugins.baseline.images import build_digits
    from genloom.plugins.baseline.images_config import DigitsConfig

    run_dir = Path(args.run_dir)
    figures: dict = {}
    if not (args.reuse and (run_dir / "model.safetensors").exists()):
        t = time.perf_counter()
        result = train(args.config, args.overrides, run_dir=run_dir, overwrite=True, generate=False)
        figures["train_seconds"] = round(time.perf_counter() - t, 1)
        figures["steps"] = result.global_step
        figures["val"] = {k: round(v, 4) for k, v in result.metrics.items() if k in ("loss", "accuracy") or k.startswith("nll_scale")}
    gen = genloom.load(run_dir)
    digits = build_digits(DigitsConfig(image_size=gen.tokenizer.image_shape[-1]))
    test = digits.load("test")
    figures["tokenizer_test_mse_by_scales"] = [round(e, 4) for e in held_out_reconstruction(gen.tokenizer, test.images)]
    figures["mean_image_mse"] = round(((test.images - test.images.mean(0)) ** 2).mean().item(), 4)

    from sklearn.linear_model import LogisticRegression

    train_split = digits.load("train")
    classifier = LogisticRegression(max_iter=2000).fit(train_split.images.flatten(1).numpy(), train_split.labels.numpy())
    figures["classifier_test_accuracy_on_real_digits"] = round(float(classifier.score(test.images.flatten(1).numpy(), test.labels.numpy())), 4)
    for cfg in (0.0, 1.5, 3.0):
        accuracy, metrics = class_accuracy(gen, classifier, args.per_class, cfg, seed=1)
        figures[f"sample_class_accuracy_cfg{cfg}"] = round(accuracy, 4)
        figures[f"decode_cfg{cfg}"] = {"forward_passes": metrics["forward_passes"], "seconds": round(metrics["seconds"], 3), "batch": metrics["batch_size"]}
    path = gen.tokenizer.generate_samples(gen, n=4, seed=0, out=args.out)
    figures["grid"] = str(path)
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
