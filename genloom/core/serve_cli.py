"""``genloom serve RUN --requests IN.jsonl --out OUT.jsonl [key=value ...]``: continuous batching of a
file of requests (:mod:`genloom.core.batching`).

Every line of the requests file is a JSON object (blank lines are skipped)::

    {"id": "q1", "prompt": "def main(", "max_new_tokens": 40, "seed": 7, "arrival": 0, "stop": ["\\n\\n"]}

``prompt`` (text, encoded by the run's tokenizer) or ``prompt_ids`` (a list of ids) is required;
the other fields are optional (:data:`FIELDS`). Every line is checked before the model is loaded;
an error names the line, the field and what is allowed. The output file holds one JSON object per
request, in the order of the requests, written atomically (a temporary file renamed into place) and
never over an existing file unless ``--overwrite`` is given.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from genloom.core.errors import GenerationError

#: The fields a request line may hold, with what each must be.
FIELDS = {
    "id": "a string or an integer, unique in the file (default: the line number)",
    "prompt": "text to continue (give prompt or prompt_ids; with source: a target prefix, optional)",
    "prompt_ids": "a non-empty list of token ids (give prompt or prompt_ids)",
    "source": "text to condition on (source-conditioned models only): decoding starts after its source block",
    "max_new_tokens": "an integer >= 0 (default: the max_new_tokens option, else the run's generate.max_new_tokens)",
    "seed": "an integer >= 0 (default: the seed option (0 when not given) + the request's index)",
    "arrival": "an integer >= 0: the engine step at which the request arrives (default 0)",
    "stop": "a list of strings that end the request once generated (default none)",
}

#: ``key=value`` options of ``genloom serve`` (the processor shorthand of ``genloom generate``,
#: the decoder, and the defaults of the request fields).
OPTIONS = ("decoder", "max_new_tokens", "seed", "do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff",
           "eta_cutoff", "min_tokens_to_keep", "repetition_penalty", "no_repeat_ngram_size", "eos_token_id")


@dataclass
class RequestLine:
    """One request as read from the file (before its prompt is encoded)."""

    line: int
    id: object
    prompt: str | None
    prompt_ids: list[int] | None
    source: str | None
    max_new_tokens: int | None
    seed: int | None
    arrival: int
    stop: tuple[str, ...]


def _int(value, line: int, name: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise GenerationError(f"requests line {line}: field '{name}' must be an integer >= {low}, got {json.dumps(value)}")
    return value


def read_requests(path) -> list[RequestLine]:
    """Read and check every line of a requests file (no model needed)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GenerationError(f"--requests: no such file '{path}'") from None
    except UnicodeDecodeError as exc:
        raise GenerationError(f"--requests: '{path}' is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise GenerationError(f"--requests: could not read '{path}' ({exc.strerror or exc})") from None
    out, ids = [], {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise GenerationError(f"requests line {number}: not valid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise GenerationError(f"requests line {number}: must be a JSON object with the fields {', '.join(FIELDS)}, got a {type(obj).__name__}")
        unknown = [k for k in obj if k not in FIELDS]
        if unknown:
            from genloom.core.errors import closest

            guess = closest(unknown[0], FIELDS)
            hint = f" (did you mean '{guess}'?)" if guess else ""
            raise GenerationError(f"requests line {number}: unknown field '{unknown[0]}'{hint}; the fields are: "
                                  + "; ".join(f"{k}: {v}" for k, v in FIELDS.items()))
        has_text, has_ids = obj.get("prompt") is not None, obj.get("prompt_ids") is not None
        source = obj.get("source")
        if source is not None and not isinstance(source, str):
            raise GenerationError(f"requests line {number}: field 'source' must be text, got {json.dumps(source)}")
        if source is not None and has_ids:
            raise GenerationError(f"requests line {number}: field 'prompt_ids' cannot go with 'source' (give the target prefix as 'prompt' text)")
        if has_text == has_ids and source is None:
            raise GenerationError(f"requests line {number}: give exactly one of the fields 'prompt' ({FIELDS['prompt']}) and 'prompt_ids' ({FIELDS['prompt_ids']})")
        prompt = obj.get("prompt")
        if has_text and not isinstance(prompt, str):
            raise GenerationError(f"requests line {number}: field 'prompt' must be text, got {json.dumps(prompt)}")
        prompt_ids = obj.get("prompt_ids")
        if has_ids and (not isinstance(prompt_ids, list) or not prompt_ids or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in prompt_ids)):
            raise GenerationError(f"requests line {number}: field 'prompt_ids' must be {FIELDS['prompt_ids'][2:]} (integers >= 0), got {json.dumps(prompt_ids)[:80]}")
        rid = obj.get("id", number)
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise GenerationError(f"requests line {number}: field 'id' must be {FIELDS['id']}, got {json.dumps(rid)}")
        if rid in ids:
            raise GenerationError(f"requests line {number}: field 'id' {json.dumps(rid)} is already the id of line {ids[rid]} (ids must be unique)")
        ids[rid] = number
        max_new = obj.get("max_new_tokens")
        seed = obj.get("seed")
        stop = obj.get("stop", [])
        if not isinstance(stop, list) or any(not isinstance(s, str) or not s for s in stop):
            raise GenerationError(f"requests line {number}: field 'stop' must be a list of non-empty strings, got {json.dumps(stop)}")
        out.append(RequestLine(
            line=number, id=rid, prompt=prompt, prompt_ids=prompt_ids, source=source,
            max_new_tokens=None if max_new is None else _int(max_new, number, "max_new_tokens"),
            seed=None if seed is None else _int(seed, number, "seed"),
            arrival=_int(obj.get("arrival", 0), number, "arrival"), stop=tuple(stop)))
    if not out:
        raise GenerationError(f"--requests: '{path}' holds no request (one JSON object per line)")
    return out


def to_requests(lines: list[RequestLine], gen, *, max_new_tokens: int | None, seed: int | None):
    """The engine's requests: prompts encoded, defaults filled, lengths checked against the model."""
    from genloom.core.batching import Request

    vocab = gen.ctx.get("vocab_size")
    limit = gen.max_positions
    default_new = max_new_tokens if max_new_tokens is not None else gen.default_max_new_tokens()
    base_seed = seed if seed is not None else 0
    out = []
    for i, r in enumerate(lines):
        if r.source is not None:
            if not gen.ctx.get("source_length"):
                raise GenerationError(f"requests line {r.line}: field 'source' needs a source-conditioned model (its data publishes source_length); this model continues a prompt")
            try:
                prefix = [list(gen.encode(r.prompt))] if r.prompt else None
                ids = gen.source_prompts([list(gen.encode(r.source))], prefix)[0]
            except (ValueError, GenerationError) as exc:
                raise GenerationError(f"requests line {r.line}: field 'source': {exc}") from None
        elif r.prompt is not None:
            try:
                ids = list(gen.encode(r.prompt))
            except ValueError as exc:
                raise GenerationError(f"requests line {r.line}: field 'prompt': {exc}") from None
            if not ids:
                raise GenerationError(f"requests line {r.line}: field 'prompt' {json.dumps(r.prompt)} encodes to no tokens")
        else:
            ids = r.prompt_ids
            if vocab and max(ids) >= int(vocab):
                raise GenerationError(f"requests line {r.line}: field 'prompt_ids' holds id {max(ids)}, beyond the vocabulary (ids 0..{int(vocab) - 1})")
        new = r.max_new_tokens if r.max_new_tokens is not None else default_new
        if limit is not None and len(ids) + new > limit:
            field = "max_new_tokens" if r.max_new_tokens is not None else "prompt"
            raise GenerationError(f"requests line {r.line}: field '{field}': the prompt ({len(ids)} tokens) + max_new_tokens ({new}) exceeds the "
                                  f"{limit} positions this model can attend to")
        if r.stop and gen.tokenizer is None:
            raise GenerationError(f"requests line {r.line}: field 'stop' needs a model with a tokenizer")
        out.append(Request(prompt=ids, max_new_tokens=new, arrival=r.arrival, seed=r.seed if r.seed is not None else base_seed + i, id=r.id, stop_strings=r.stop))
    return out


def _options(overrides: list[str]):
    from genloom.core import generate_cli

    opts, config_overrides = generate_cli.parse(overrides, generate_cli._custom_kind_keys())
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(opts)}
    given = [k for k in generate_cli.OPTIONS if getattr(opts, k) is not None and getattr(opts, k) != defaults.get(k)]
    refused = [k for k in given if k not in OPTIONS]
    if refused:
        raise GenerationError(f"option '{refused[0]}' does not apply to genloom serve; its options are: {', '.join(OPTIONS)}, decoder.FIELD "
                              "(prompts, lengths, seeds and arrivals come from the requests file)")
    return opts, config_overrides


def main(args) -> int:
    import genloom
    from genloom.core import runio

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise GenerationError(f"--out: '{out}' exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise GenerationError(f"--out: the directory '{out.parent}' does not exist")
    if args.max_batch_size is not None and args.max_batch_size < 1:
        raise GenerationError(f"--max-batch-size must be >= 1, got {args.max_batch_size}")
    opts, config_overrides = _options(args.overrides)
    lines = read_requests(args.requests)  # every line is checked before the model is loaded
    gen = genloom.load(args.run, config_overrides or None)
    requests = to_requests(lines, gen, max_new_tokens=opts.max_new_tokens, seed=opts.seed)
    shorthand = {k: getattr(opts, k) for k in OPTIONS[3:] if getattr(opts, k) is not None}
    with _progress(len(requests), enabled=not args.no_progress and sys.stderr.isatty()) as advance:
        result = gen.serve(requests, max_batch_size=args.max_batch_size, on_complete=advance, **shorthand)
    records = []
    for c in result.completions:
        record = {"id": c.id, "ids": c.ids}
        if gen.tokenizer is not None:
            text = gen.tokenizer.decode(c.ids)
            if isinstance(text, str):
                record["text"] = text
        record.update({"tokens": len(c.ids), "seed": c.seed, "arrival": c.arrival, "admitted": c.admitted, "finished": c.finished})
        records.append(json.dumps(record, ensure_ascii=False))
    try:
        runio.write_text(out, "\n".join(records) + "\n")
    except OSError as exc:
        raise GenerationError(f"--out: could not write '{out}' ({exc.strerror or exc})") from None
    m = result.metrics
    if args.json:
        print(json.dumps({"requests": len(records), **m.to_dict()}))
    else:
        per_step = f"{m.tokens_per_fused_step:.2f}" if m.tokens_per_fused_step else "-"
        print(f"wrote {out}: {len(records)} requests, {m.tokens_generated} tokens, {m.fused_steps} fused steps + {m.prefills} prefills, "
              f"{per_step} tokens per fused step, peak batch {m.peak_batch}, {m.tokens_per_second:.1f} tok/s", file=sys.stderr)
    return 0


class _progress:
    """A progress bar over the requests on a terminal's stderr (rich), advanced once per completed request."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.enabled = total, enabled

    def __enter__(self):
        if not self.enabled:
            return lambda completion: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("serving"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self._bar.start()
        task = self._bar.add_task("serve", total=self.total)
        return lambda completion: self._bar.advance(task)

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.stop()
        return False
