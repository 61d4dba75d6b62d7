"""``genloom generate RUN [key=value ...]``: text to stdout, images/series to files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from genloom.core.errors import ConfigError

OPTIONS = {"decoder", "max_new_tokens", "prompt", "num_samples", "seed", "out", "temperature"}


def parse(overrides: list[str]) -> tuple[dict, dict]:
    opts, decoder_fields = {}, {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"'{item}' is not of the form key=value (keys: {', '.join(sorted(OPTIONS))}, decoder.FIELD)")
        key, _, value = item.partition("=")
        if key.startswith("decoder."):
            decoder_fields[key[len("decoder."):]] = _scalar(value)
        elif key in OPTIONS:
            opts[key] = value
        else:
            raise ConfigError(f"unknown option '{key}' (allowed: {', '.join(sorted(OPTIONS))}, decoder.FIELD=VALUE)")
    return opts, decoder_fields


def _scalar(v: str):
    import yaml

    return yaml.safe_load(v)


def main(args) -> int:
    import genloom

    opts, fields = parse(args.overrides)
    gen = genloom.load(args.run)
    defaults = gen.model.config.sections.get("generate") if gen.model.config is not None else None
    prompt = opts.get("prompt", defaults.prompt if defaults else "")
    max_new = int(opts.get("max_new_tokens", defaults.max_new_tokens if defaults else 100))
    n = int(opts.get("num_samples", defaults.num_samples if defaults else 1))
    seed = int(opts.get("seed", defaults.seed if defaults else 0))
    decoder = None
    if "decoder" in opts or fields:
        spec = gen.model.decoder_spec
        name = opts.get("decoder") or (spec.record.qualified_name if spec else "sampling")
        same = spec is not None and name in (spec.record.name, spec.record.qualified_name)
        # overriding fields of the run's own decoder keeps its other fields (a draft model, say)
        base = {f: getattr(spec.config, f) for f in spec.config.__dataclass_fields__} if same else {}
        decoder = {**base, "name": name, **fields}
    # a component whose output is not text (an image tokenizer, a forecasting objective) decides how
    # a sample is generated and written: the tokenizer first, then the objective
    writer = getattr(gen.tokenizer, "generate_samples", None) or getattr(gen.model.objective, "generate_samples", None)
    if writer is not None:
        path = writer(gen, n=n, seed=seed, out=opts.get("out"), decoder=decoder)
        print(f"wrote {path}")
        return 0
    ids = gen.encode(prompt) if prompt else [gen.ctx.get("eos_id") or 0]
    result = gen.generate([list(ids)] * n, max_new_tokens=max_new, decoder=decoder, seed=seed)
    for text in result.decode():
        sys.stdout.write(prompt + (text if isinstance(text, str) else str(text)) + "\n")
    if opts.get("out"):
        Path(opts["out"]).write_text(json.dumps({"ids": result.ids, "metrics": result.metrics.to_dict()}))
    if args.json:
        print(json.dumps(result.metrics.to_dict()))
    else:
        m = result.metrics
        print(f"[{m.tokens_generated} tokens in {m.seconds:.2f}s, {m.tokens_per_second:.1f} tok/s, {m.forward_passes}]", file=sys.stderr)
    return 0
