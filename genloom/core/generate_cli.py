"""``genloom generate RUN [key=value ...] [--json]``: text to stdout, images/series to files.

Options are typed and checked before anything is loaded (:data:`OPTIONS`); each one takes effect
or is refused with the list of those that exist. ``decoder=NAME``, ``decoder.FIELD=VALUE`` and
overrides of a declared component kind's top-level node (``reward.name=...``) are config
overrides: they are applied to the run's config before it is validated, so ``genloom_configure``
sees them and the decoder is built like any component. The transformers-style shorthand
(``temperature=0.7``, ``top_p=0.9``, ``num_beams=4``...) goes through the same mapping as
:meth:`genloom.core.generation.Generator.generate`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Literal

from genloom.core.errors import GenerationError


@dataclasses.dataclass
class GenerateOptions:
    """The options of ``genloom generate`` (None: the run config's ``generate`` section, else the default)."""

    prompt: str | None = None
    """Text to continue (default: the config's generate.prompt; empty: start from end-of-sequence)."""
    source: str | None = None
    """Source text of a source-conditioned model (sequence to sequence): decoding starts after it and only the target is printed."""
    max_new_tokens: int | None = None
    """Tokens to generate per sample (default: generate.max_new_tokens)."""
    num_samples: int | None = None
    """Samples to generate from the prompt (default: generate.num_samples)."""
    seed: int | None = None
    """Seed of the sampler (default: generate.seed; none there: a fresh seed, printed so the sample can be reproduced)."""
    out: str | None = None
    """Write ids and metrics as JSON here (text), or the samples file (images, series); an existing file needs overwrite=true."""
    overwrite: bool = False
    """Replace an existing ``out`` file."""
    decoder: str | None = None
    """Decoder to use instead of the run's (fields as decoder.FIELD=VALUE)."""
    cache: Literal["dynamic", "static"] | None = None
    """KV cache (default: generate.cache): 'static' preallocates it (docs/generation.md)."""
    compile: bool | None = None
    """Compile the one-token decode step with torch.compile (default: generate.compile; needs cache=static)."""
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    epsilon_cutoff: float | None = None
    eta_cutoff: float | None = None
    min_tokens_to_keep: int | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    num_beams: int | None = None
    length_penalty: float | None = None
    early_stopping: bool | Literal["never"] | None = None
    num_return_sequences: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self):
        at_least = {"max_new_tokens": 0, "num_samples": 1, "seed": 0, "top_k": 0, "min_tokens_to_keep": 1, "no_repeat_ngram_size": 0, "num_beams": 1, "num_return_sequences": 1}
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"option '{name}' must be >= {low}, got {value}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"option 'temperature' must be > 0 (for temperature 0 use do_sample=false), got {self.temperature}")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise ValueError(f"option 'repetition_penalty' must be > 0, got {self.repetition_penalty}")
        for name in ("top_p", "typical_p"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"option '{name}' must be in (0, 1], got {value}")
        for name in ("min_p", "epsilon_cutoff", "eta_cutoff"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"option '{name}' must be in [0, 1), got {value}")
        eos = [self.eos_token_id] if isinstance(self.eos_token_id, int) else (self.eos_token_id or [])
        if any(e < 0 for e in eos):
            raise ValueError(f"option 'eos_token_id' must hold ids >= 0, got {self.eos_token_id}")
        for name in ("prompt", "source"):
            text = getattr(self, name)
            if text is None:
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = text[exc.start]
                byte = f"0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else repr(bad)
                raise ValueError(f"option '{name}' is not valid UTF-8 text (byte {byte} at character {exc.start})") from None


OPTIONS = tuple(f.name for f in dataclasses.fields(GenerateOptions))
_TEXT = ("prompt", "source", "out", "decoder")  # kept as typed, never parsed as YAML
_SHORTHAND_OPTIONS = OPTIONS[OPTIONS.index("do_sample"):]


def _allowed(custom_keys=()) -> str:
    extra = ", ".join(f"{k}.FIELD" for k in custom_keys)
    return f"{', '.join(OPTIONS)}, decoder.FIELD{', ' + extra if extra else ''}"


def parse(overrides: list[str], custom_keys=()) -> tuple[GenerateOptions, list[str]]:
    """Typed options and the config overrides (``decoder.*`` and declared kinds' top-level nodes)."""
    from genloom.core import config as config_mod

    raw, config_overrides = {}, []
    hints = __import__("typing").get_type_hints(GenerateOptions)
    for item in overrides:
        if "=" not in item:
            raise GenerationError(f"'{item}' is not of the form key=value (options: {_allowed(custom_keys)})")
        key, _, value = item.partition("=")
        root = key.split(".")[0].split("[")[0]
        if key.startswith("decoder.") or root in custom_keys:
            config_overrides.append(item)
            continue
        if key not in OPTIONS:
            guess = __import__("genloom.core.errors", fromlist=["closest"]).closest(key, OPTIONS)
            hint = f" Did you mean '{guess}'?" if guess else ""
            raise GenerationError(f"unknown option '{key}'.{hint} Options: {_allowed(custom_keys)}")
        parsed = value if key in _TEXT else _scalar(key, value)
        try:
            raw[key] = config_mod.convert(parsed, hints[key], key)
        except Exception:
            raise GenerationError(f"option '{key}': {value!r} is not a valid {config_mod._type_name(hints[key])}") from None
    try:
        opts = GenerateOptions(**raw)
    except ValueError as exc:
        raise GenerationError(str(exc)) from None
    if opts.decoder is not None:
        config_overrides.insert(0, f"decoder.name={opts.decoder}")
    return opts, config_overrides


def _scalar(key: str, v: str):
    import yaml

    try:
        return yaml.safe_load(v) if v.strip() else None
    except yaml.YAMLError:
        raise GenerationError(f"option '{key}': could not read {v!r}") from None


def _custom_kind_keys() -> tuple[str, ...]:
    """Top-level config keys of component kinds that plugins declared (``reward`` and the like)."""
    from genloom.core.config import COMPONENT_KEYS, LIST_KEYS
    from genloom.core.plugins import get_registry

    keys = []
    for kind in get_registry().kinds.values():
        key = getattr(kind, "config_key", None)
        if key and key not in COMPONENT_KEYS and key not in LIST_KEYS:
            keys.append(key)
    return tuple(keys)


def _write_json(out: str, result) -> None:
    """ids and metrics as JSON, written atomically (a temporary file renamed over ``out``)."""
    from genloom.core import runio

    try:
        runio.write_text(Path(out), json.dumps({"ids": result.ids, "metrics": result.metrics.to_dict()}))
    except OSError as exc:
        raise GenerationError(f"option 'out': could not write '{out}' ({exc.strerror or exc})") from None


def _progress():
    """A transient progress bar over the generated tokens on a terminal's stderr (None elsewhere)."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True)


def _generate(gen, *args, **kwargs):
    bar = _progress()
    if bar is None:
        return gen.generate(*args, **kwargs)
    with bar:
        task = bar.add_task("generating", total=None)
        return gen.generate(*args, progress=lambda done, total: bar.update(task, completed=done, total=total), **kwargs)


def main(args) -> int:
    import genloom

    opts, config_overrides = parse(args.overrides, _custom_kind_keys())
    if opts.out is not None and Path(opts.out).exists() and not opts.overwrite:
        raise GenerationError(f"option 'out': '{opts.out}' already exists; pass overwrite=true to replace it, or choose another out=")
    gen = genloom.load(args.run, config_overrides or None)
    defaults = gen.model.config.sections.get("generate") if gen.model.config is not None else None
    n = opts.num_samples if opts.num_samples is not None else (defaults.num_samples if defaults else 1)
    seed = opts.seed if opts.seed is not None else (defaults.seed if defaults else None)
    shorthand = {k: getattr(opts, k) for k in _SHORTHAND_OPTIONS if getattr(opts, k) is not None}
    # a component whose output is not text (an image tokenizer, a forecasting objective) decides how
    # a sample is generated and written: the tokenizer first, then the objective
    writer = getattr(gen.tokenizer, "generate_samples", None) or getattr(gen.model.objective, "generate_samples", None)
    if writer is not None:
        ignored = [k for k in ("prompt", "source", "max_new_tokens", *shorthand) if getattr(opts, k) is not None]
        if ignored:
            owner = type(gen.tokenizer if hasattr(gen.tokenizer, "generate_samples") else gen.model.objective).__name__
            raise GenerationError(f"option(s) {', '.join(ignored)} do not apply to this {owner} model (it writes samples with: num_samples, seed, out, decoder, decoder.FIELD)")
        path = writer(gen, n=n, seed=seed, out=opts.out, decoder=None)
        print(f"wrote {path}")
        return 0
    prompt = opts.prompt if opts.prompt is not None else (defaults.prompt if defaults else "")
    max_new = opts.max_new_tokens if opts.max_new_tokens is not None else (defaults.max_new_tokens if defaults else 100)
    if opts.source is not None:
        return _generate_from_source(gen, opts, n, seed, max_new, shorthand, args)
    try:
        ids = list(gen.encode(prompt)) if prompt else [gen.eos_ids[0] if gen.eos_ids else 0]
    except ValueError as exc:
        raise GenerationError(f"option 'prompt': {exc}") from None
    if not ids:
        raise GenerationError(f"option 'prompt': {prompt!r} encodes to no tokens")
    limit = gen.max_positions
    if limit is not None and opts.max_new_tokens is None:
        max_new = max(0, min(max_new, limit - len(ids)))  # a default never exceeds what the model can attend to
    if limit is not None and len(ids) + max_new > limit:
        raise GenerationError(f"option 'max_new_tokens': the prompt ({len(ids)} tokens) + max_new_tokens ({max_new}) exceeds the {limit} positions this model can attend to; use max_new_tokens <= {max(limit - len(ids), 0)}")
    result = _generate(gen, [ids] * n, max_new_tokens=max_new, seed=seed, cache=opts.cache, compile=opts.compile, **shorthand)
    for text in result.decode():
        sys.stdout.write(prompt + (text if isinstance(text, str) else str(text)) + "\n")
    if opts.out:
        _write_json(opts.out, result)
    if args.json:
        print(json.dumps(result.metrics.to_dict()))
    else:
        m = result.metrics
        print(f"[{m.tokens_generated} tokens in {m.seconds:.2f}s, {m.tokens_per_second:.1f} tok/s, {m.forward_passes}, seed={m.seed}]", file=sys.stderr)
    return 0


def _generate_from_source(gen, opts, n, seed, max_new, shorthand, args) -> int:
    """``source=TEXT``: decode a target after the source block; print the target only."""
    try:
        source = list(gen.encode(opts.source))
    except ValueError as exc:
        raise GenerationError(f"option 'source': {exc}") from None
    prefix = [list(gen.encode(opts.prompt))] if opts.prompt else None
    result = _generate(gen, prefix, max_new_tokens=max_new, seed=seed, cache=opts.cache, compile=opts.compile, source=[source] * n, **shorthand)
    for text in result.decode():
        sys.stdout.write((opts.prompt or "") + (text if isinstance(text, str) else str(text)) + "\n")
    if opts.out:
        _write_json(opts.out, result)
    if args.json:
        print(json.dumps(result.metrics.to_dict()))
    return 0
