"""Generation: one propose -> verify -> commit loop for every decoding strategy.

A :class:`Decoder` implements ``start`` (prefill), ``propose`` (draft one or more tokens, a tree, a
masked block...), ``verify`` (decide what to keep; returns a :class:`Commit`) and ``advance``
(update its state after the commit). The :class:`Session` owns what every strategy shares: the
left-padded batch, per-sequence stopping (EOS, stop strings, max tokens), logits processors, a
seeded generator and the metrics (forward passes per model, tokens per forward pass, acceptance
lengths and per-position acceptance rates, tokens/s).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from genloom.core.errors import ConfigError, GenerationError


@dataclass
class Commit:
    """What a verify step keeps: ``tokens[b, :counts[b]]`` are appended to sequence b."""

    tokens: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def all(cls, tokens: torch.Tensor) -> "Commit":
        tokens = tokens if tokens.dim() == 2 else tokens[:, None]
        return cls(tokens, torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long, device=tokens.device))

    @classmethod
    def sequences(cls, rows, eos_id: int | None, device=None) -> "Commit":
        """Whole outputs at once (a non-autoregressive or insertion decoder's final step): each row's
        ids (a list) followed by ``eos_id`` (0 when None), padded with it to the longest row."""
        eos = 0 if eos_id is None else int(eos_id)
        rows = [list(r) for r in rows]
        tokens = torch.full((len(rows), max((len(r) for r in rows), default=0) + 1), eos, dtype=torch.long)
        for b, r in enumerate(rows):
            if r:
                tokens[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        return cls(tokens.to(device), torch.tensor([len(r) + 1 for r in rows], device=device))


@dataclass
class GenerationMetrics:
    batch_size: int = 0
    tokens_generated: int = 0
    steps: int = 0
    forward_passes: dict[str, int] = field(default_factory=dict)
    acceptance_lengths: list[int] = field(default_factory=list)
    position_proposed: list[int] = field(default_factory=list)
    position_accepted: list[int] = field(default_factory=list)
    seconds: float = 0.0
    first_token_seconds: float | None = None
    seed: int | None = None
    """The seed of the run's random generator: pass it back as ``seed=`` to reproduce the samples."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Decoder-specific figures (network evaluations per sequence, early-commit steps...)."""

    def count_forward(self, name: str = "target", n: int = 1) -> None:
        self.forward_passes[name] = self.forward_passes.get(name, 0) + n

    def record_acceptance(self, accepted: torch.Tensor, proposed: torch.Tensor | int, active: torch.Tensor | None = None) -> None:
        """Record, per sequence, how many of its drafted tokens were accepted."""
        accepted = accepted.detach().cpu().long()
        proposed = torch.as_tensor(proposed).expand_as(accepted).cpu().long() if not torch.is_tensor(proposed) or proposed.dim() == 0 else proposed.cpu().long()
        rows = range(accepted.numel()) if active is None else active.nonzero().flatten().tolist()
        for b in rows:
            a, p = int(accepted[b]), int(proposed[b])
            self.acceptance_lengths.append(a)
            while len(self.position_proposed) < p:
                self.position_proposed.append(0)
                self.position_accepted.append(0)
            for i in range(p):
                self.position_proposed[i] += 1
                self.position_accepted[i] += int(i < a)

    @property
    def mean_acceptance_length(self) -> float | None:
        return sum(self.acceptance_lengths) / len(self.acceptance_lengths) if self.acceptance_lengths else None

    @property
    def acceptance_rate_by_position(self) -> list[float]:
        return [a / p if p else 0.0 for a, p in zip(self.position_accepted, self.position_proposed)]

    @property
    def tokens_per_forward(self) -> float | None:
        calls = self.forward_passes.get("target", 0)
        return self.tokens_generated / (calls * max(self.batch_size, 1)) if calls else None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_generated / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "tokens_generated": self.tokens_generated,
            "steps": self.steps,
            "forward_passes": dict(self.forward_passes),
            "tokens_per_forward": self.tokens_per_forward,
            "mean_acceptance_length": self.mean_acceptance_length,
            "acceptance_rate_by_position": self.acceptance_rate_by_position,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
            "time_to_first_token": self.first_token_seconds,
            "seed": self.seed,
            **({"extra": dict(self.extra)} if self.extra else {}),
        }


@dataclass
class GenerationResult:
    """Generated token ids per sequence (prompt excluded) and the run's metrics."""

    ids: list[list[int]]
    metrics: GenerationMetrics
    tokenizer: Any = None

    def decode(self) -> list:
        """The generated sequences decoded by the model's tokenizer (text, images...)."""
        if self.tokenizer is None:
            raise ValueError("no tokenizer to decode with")
        return [self.tokenizer.decode(seq) for seq in self.ids]

    def text(self) -> list[str]:
        return [d if isinstance(d, str) else str(d) for d in self.decode()]


def pad_left(prompts, pad_id: int = 0, device=None, min_width: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad a list of id sequences: (B, P) ids and (B, P) validity (P >= ``min_width``)."""
    seqs = [torch.as_tensor(list(p), dtype=torch.long) for p in prompts]
    P = max(max((len(s) for s in seqs), default=0), min_width)
    ids = torch.full((len(seqs), P), pad_id, dtype=torch.long)
    valid = torch.zeros(len(seqs), P, dtype=torch.bool)
    for b, s in enumerate(seqs):
        if len(s):
            ids[b, P - len(s):] = s
            valid[b, P - len(s):] = True
    return ids.to(device), valid.to(device)


def eos_tuple(eos) -> tuple[int, ...]:
    """End-of-sequence ids as a tuple: None, one id, or an iterable of ids (a tensor too)."""
    if eos is None:
        return ()
    if torch.is_tensor(eos):
        eos = eos.flatten().tolist()
    if isinstance(eos, int):
        return (int(eos),)
    return tuple(dict.fromkeys(int(e) for e in eos))


class Session:
    """The state shared by every decoding strategy during one ``generate`` call."""

    def __init__(self, model, prompts, *, max_new_tokens: int, processors=(), generator=None, eos_id=None, stop_strings=(), tokenizer=None, device=None, pad_id: int = 0):
        self.model = model
        self.device = device or model_device(model)
        prompts = [list(p) for p in prompts]
        if not prompts:
            raise GenerationError("no prompts to continue (pass one list of ids, or a list of them)")
        empty = [i for i, p in enumerate(prompts) if not p]
        if empty:
            raise GenerationError(f"prompt {empty[0]} is empty: every decoder needs at least one token to condition on "
                                  "(start from the tokenizer's end-of-sequence id for an unconditional sample)")
        self.prompt_ids, self.prompt_valid = pad_left(prompts, pad_id, self.device)
        self.batch_size = self.prompt_ids.shape[0]
        self.max_new_tokens = max_new_tokens
        self.processors = list(processors)
        self.generator = generator
        self.eos_ids: tuple[int, ...] = eos_tuple(eos_id)
        """Every end-of-sequence id: a sequence stops at the first of them it generates."""
        self.eos_id = self.eos_ids[0] if self.eos_ids else None
        """The first end-of-sequence id (kept for decoders written before EOS sets)."""
        self.stop_strings = [s for s in (stop_strings or []) if s]
        self.tokenizer = tokenizer
        self.generated: list[list[int]] = [[] for _ in range(self.batch_size)]
        self.finished = torch.zeros(self.batch_size, dtype=torch.bool, device=self.device)
        self.metrics = GenerationMetrics(batch_size=self.batch_size)
        self.state = None
        self.scratch: dict[str, Any] = {}  # decoders keep their own per-call values here
        self.last_kept = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)
        """(B,) tokens the last commit kept per sequence (fewer than proposed when a sequence stopped)."""
        self._t0 = time.perf_counter()
        if max_new_tokens <= 0:
            self.finished[:] = True

    # -- what decoders use ----------------------------------------------------------------
    def forward(self, ids, *, state=None, valid=None, pattern=None, model=None, name: str = "target"):
        """Run a model (default: the target) and count the forward pass under ``name``."""
        self.metrics.count_forward(name)
        return (model or self.model)(ids, pattern=pattern, state=state, valid=valid)

    def history(self, pad: int = -1) -> torch.Tensor:
        """(B, T) prompt + generated ids, left-padded with ``pad`` (processors read this)."""
        G = max((len(g) for g in self.generated), default=0)
        gen = torch.full((self.batch_size, G), pad, dtype=torch.long)
        for b, g in enumerate(self.generated):
            if g:
                gen[b, : len(g)] = torch.tensor(g)
        gen = gen.to(self.device)
        ids = torch.cat([torch.where(self.prompt_valid, self.prompt_ids, pad), gen], 1)
        real = torch.cat([self.prompt_valid, gen != pad], 1) if pad < 0 else torch.cat([self.prompt_valid, torch.arange(G, device=self.device)[None] < self.gen_lengths[:, None]], 1)
        # move padding to the left, keeping the order of real tokens (a stable sort on the mask)
        order = torch.sort(real.int(), dim=1, stable=True).indices
        return ids.gather(1, order)

    @property
    def gen_lengths(self) -> torch.Tensor:
        return torch.tensor([len(g) for g in self.generated], dtype=torch.long, device=self.device)

    def process(self, logits: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the logits processors to (B, V) or (B, k, V) logits."""
        if not self.processors:
            return logits
        hist = self.history() if history is None else history
        if logits.dim() == 2:
            for proc in self.processors:
                logits = proc(logits, hist)
            return logits
        out = []
        for i in range(logits.shape[1]):
            step = logits[:, i]
            for proc in self.processors:
                step = proc(step, hist)
            out.append(step)
        return torch.stack(out, 1)

    def prefill_all_but_last(self, state, *, model=None, name: str = "target") -> None:
        """Feed every prompt token but the last into ``state`` (decoders that feed the last one with
        their first drafts). A source-conditioned model (its context holds ``source_length``) whose
        prompt ends inside the bidirectional source block (an empty target prefix) is fed the whole
        prompt and rolled back by one position instead: every source position then sees the whole
        block, as in a plain prefill, and feeding the last token again reproduces it exactly."""
        if self.prompt_ids.shape[1] <= 1:
            return
        m = self.model if model is None else model
        ctx = getattr(m, "ctx", None)
        source_length = ctx.get("source_length") if ctx is not None and hasattr(ctx, "get") else None
        if source_length and bool((self.prompt_valid.sum(1) <= int(source_length)).any()):
            self.forward(self.prompt_ids, state=state, valid=self.prompt_valid, model=model, name=name)
            state.rollback(state.lengths - 1)
        else:
            self.forward(self.prompt_ids[:, :-1], state=state, valid=self.prompt_valid[:, :-1], model=model, name=name)

    def tokens_done(self) -> int:
        """Tokens generated so far over the batch, a finished sequence counting ``max_new_tokens``."""
        return int(sum(self.max_new_tokens if f else min(len(g), self.max_new_tokens) for g, f in zip(self.generated, self.finished.tolist())))

    @property
    def remaining(self) -> torch.Tensor:
        """(B,) tokens each sequence may still generate (0 once finished)."""
        left = torch.tensor([self.max_new_tokens - len(g) for g in self.generated], device=self.device)
        return torch.where(self.finished, torch.zeros_like(left), left)

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) prompt + generated length per sequence."""
        return self.prompt_valid.sum(1) + torch.tensor([len(g) for g in self.generated], device=self.device)

    def done(self) -> bool:
        return bool(self.finished.all())

    # -- the commit step ------------------------------------------------------------------
    def commit(self, commit: Commit) -> torch.Tensor:
        """Append the accepted tokens, apply stop conditions; returns the (B,) counts actually kept."""
        tokens = commit.tokens.detach().cpu()
        counts = commit.counts.detach().cpu()
        kept = torch.zeros(self.batch_size, dtype=torch.long)
        for b in range(self.batch_size):
            if bool(self.finished[b]):
                continue
            for t in tokens[b, : int(counts[b])].tolist():
                self.generated[b].append(int(t))
                kept[b] += 1
                if self._stops(b, int(t)):
                    self.finished[b] = True
                    break
        self.last_kept = kept.to(self.device)
        self.metrics.tokens_generated += int(kept.sum())
        self.metrics.steps += 1
        if self.metrics.first_token_seconds is None and int(kept.sum()) > 0:
            self.metrics.first_token_seconds = time.perf_counter() - self._t0
        return kept.to(self.device)

    def _stops(self, b: int, token: int) -> bool:
        if token in self.eos_ids:
            return True
        if len(self.generated[b]) >= self.max_new_tokens:
            return True
        if self.stop_strings and self.tokenizer is not None:
            text = self.tokenizer.decode(self.generated[b])
            if isinstance(text, str) and any(s in text for s in self.stop_strings):
                return True
        return False

    def result(self) -> GenerationResult:
        self.metrics.seconds = time.perf_counter() - self._t0
        return GenerationResult(ids=self.generated, metrics=self.metrics, tokenizer=self.tokenizer)


def initial_capacity(session: Session, extra: int = 16) -> int:
    """Slots to allocate for a session's incremental state: prompt + new tokens (+ ``extra`` for
    drafts), at most 4096 beyond the prompt at first (the cache grows when a long run needs more)."""
    return session.prompt_ids.shape[1] + min(session.max_new_tokens, 4096) + extra


class Decoder:
    """A decoding strategy on the shared loop. Subclasses override what they change.

    The default implements plain autoregressive decoding with a KV cache: ``start`` prefills the
    prompt, ``propose`` picks one token from the processed next-token logits with :meth:`choose`,
    ``verify`` accepts it, ``advance`` feeds it to the model.
    """

    exact: str | None = None
    """What the decoder's output provably equals, for pages and tests to state (a class attribute,
    or a property when it depends on the config): ``"sampling"`` -- its output law is the target
    model's (processed) sampling law, as for speculative sampling; ``"greedy"`` -- token for token
    the target's greedy decoding; None -- no such claim (a different rule, or approximate)."""

    def __init__(self, config=None, ctx=None):
        self.config = config
        self.ctx = ctx

    # prefill ------------------------------------------------------------------------------
    def start(self, session: Session) -> None:
        capacity = initial_capacity(session)
        session.state = session.model.init_state(session.batch_size, capacity)
        logits = session.forward(session.prompt_ids, state=session.state, valid=session.prompt_valid)
        session.scratch["next_logits"] = logits[:, -1]

    def choose(self, session: Session, logits: torch.Tensor) -> torch.Tensor:
        """(B,) next tokens from processed (B, V) logits; the default samples from the head's distribution."""
        return session.model.head.sample(logits, session.generator)

    def propose(self, session: Session):
        return self.choose(session, session.process(session.scratch["next_logits"]))

    def verify(self, session: Session, proposal) -> Commit:
        return Commit.all(proposal)

    def advance(self, session: Session, commit: Commit) -> None:
        logits = session.forward(commit.tokens[:, :1], state=session.state)
        session.scratch["next_logits"] = logits[:, -1]


def model_device(model) -> torch.device:
    """The device of a model's first parameter, else of its first buffer, else the CPU (a model
    need not have parameters: e.g. a backbone that is a fitted decision tree)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def fresh_seed() -> int:
    """A seed drawn from the operating system's entropy (leaves every random state untouched)."""
    import os

    return int.from_bytes(os.urandom(8), "little") & (2**63 - 1)


def state_nbytes(obj, _seen=None) -> int:
    """Bytes of every distinct tensor storage reachable from ``obj`` (a decoding state: its
    attributes, lists, tuples and dicts; modules are not followed). A growing cache counts its
    allocated capacity."""
    seen = set() if _seen is None else _seen
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(x, seen) for x in obj)
    if isinstance(obj, dict):
        return sum(state_nbytes(x, seen) for x in obj.values())
    if hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module):
        return sum(state_nbytes(x, seen) for x in vars(obj).values())
    return 0


def available_memory(device) -> int | None:
    """Bytes that can still be allocated on ``device`` (CUDA: free device memory; CPU: the
    kernel's MemAvailable), or None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024


def check_memory(model, rows: int, prompt_length: int, max_new_tokens: int, *, what: str = "", fraction: float = 0.9) -> None:
    """Refuse, before anything is allocated, a generation whose decoding state and logits would not
    fit in ``fraction`` of the memory available: ``rows`` sequences, each with one state row sized for
    the prompt and the new tokens (measured on a one-row state) and a few vocabulary-sized buffers."""
    device = model_device(model)
    free = available_memory(device)
    if free is None or rows <= 0:
        return
    vocab = getattr(getattr(model, "tokenizer", None), "vocab_size", None) or 0
    per_row = 4 * 4 * int(vocab) + 8 * (prompt_length + max_new_tokens)  # logits and processed copies, token ids
    if rows * per_row <= fraction * free and rows <= 4096:
        return  # small enough whatever the state: skip building one
    try:
        state = model.init_state(1, prompt_length + min(max_new_tokens, 4096) + 16)
        per_row += state_nbytes(state)
        del state
    except Exception:  # a model without an incremental state (it regenerates the whole sequence)
        pass
    need = rows * per_row
    if need > fraction * free:
        raise GenerationError(f"generating {rows} sequences ({what or f'{rows} rows'}) needs about {_size(need)} of decoding state and "
                              f"logits ({_size(per_row)} per sequence) but {_size(free)} is available on {device}; lower "
                              f"num_return_sequences, the number of prompts or max_new_tokens, or generate in smaller batches")


def run(model, prompts, decoder: Decoder, *, max_new_tokens: int = 64, processors=(), seed: int | None = 0, eos_id=None, stop_strings=(), tokenizer=None, cache: str = "dynamic", compile: bool = False,
        progress=None) -> GenerationResult:
    """Generate continuations of ``prompts`` (lists of ids) with ``decoder`` on the shared loop.

    ``eos_id`` is one id or a collection of them; ``seed=None`` draws a fresh seed. The seed used is
    in ``result.metrics.seed`` either way. ``cache="static"`` decodes through a preallocated cache
    of fixed shape and ``compile=True`` runs each one-token step through ``torch.compile``
    (:mod:`genloom.core.static_decode`). ``progress(done, total)``, if given, is called after every
    commit with the tokens generated so far (a finished sequence counts in full) and the most there can be.
    """
    allowed = getattr(getattr(model, "head", None), "decoded_by", ())
    if allowed and not isinstance(decoder, tuple(allowed)):
        raise GenerationError(f"the {type(model.head).__name__} head is decoded by {', '.join(t.__name__ for t in allowed)} only (its outputs are not "
                              f"next-token logits a generic decoder can read), not by {type(decoder).__name__}: choose the plugin's own decoder (see its catalogue page)")
    device = model_device(model)
    if cache != "dynamic" or compile:
        from genloom.core import static_decode

        model = static_decode.prepare(model, cache=cache, compile=compile)
    generator = torch.Generator(device=device)
    seed = fresh_seed() if seed is None else int(seed)
    generator.manual_seed(seed)
    was_training = model.training
    model.eval()
    session = Session(model, prompts, max_new_tokens=max_new_tokens, processors=processors, generator=generator, eos_id=eos_id, stop_strings=stop_strings, tokenizer=tokenizer, device=device)
    session.metrics.seed = seed
    try:
        with torch.inference_mode():
            if not session.done():
                decoder.start(session)
            while not session.done():
                proposal = decoder.propose(session)
                commit = decoder.verify(session, proposal)
                session.commit(commit)
                if progress is not None:
                    progress(session.tokens_done(), session.batch_size * session.max_new_tokens)
                if session.done():
                    break
                decoder.advance(session, commit)
    finally:
        model.train(was_training)
    return session.result()


# ---------------------------------------------------------------------------------------------
# Loading trained models
# ---------------------------------------------------------------------------------------------

#: The transformers-style keyword shorthand for processors, in the order transformers applies them:
#: (keyword, processor name, its field, the value that means "off" (no processor)).
SHORTHAND_PROCESSORS = (
    ("repetition_penalty", "repetition-penalty", "penalty", lambda v: v == 1.0),
    ("no_repeat_ngram_size", "no-repeat-ngram", "n", lambda v: v == 0),
    ("temperature", "temperature", "temperature", lambda v: v == 1.0),
    ("top_k", "top-k", "k", lambda v: v == 0),
    ("top_p", "top-p", "p", lambda v: v >= 1.0),
    ("min_p", "min-p", "p", lambda v: v == 0.0),
    ("typical_p", "typical", "p", lambda v: v >= 1.0),
    ("epsilon_cutoff", "epsilon", "epsilon", lambda v: v == 0.0),
    ("eta_cutoff", "eta", "epsilon", lambda v: v == 0.0),
)
#: Keywords that only change sampling (transformers ignores them without ``do_sample``).
SAMPLING_ONLY = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "min_tokens_to_keep")
#: Keywords that choose or configure the decoder.
SHORTHAND_DECODER = ("do_sample", "num_beams", "length_penalty", "early_stopping")
#: Every keyword of the shorthand (``num_return_sequences`` and ``eos_token_id`` are handled by the loop).
SHORTHAND = tuple(k for k, *_ in SHORTHAND_PROCESSORS) + SHORTHAND_DECODER + ("min_tokens_to_keep", "num_return_sequences", "eos_token_id")
_KEEP_FIELD = {"top-k", "top-p", "min-p", "typical", "epsilon", "eta"}


def apply_shorthand(options: dict, decoder_node: dict, processor_nodes: list) -> tuple[dict, list]:
    """Map transformers-style keywords onto a decoder node and processor nodes.

    ``do_sample=True`` selects ``sampling``; ``do_sample=False`` ``greedy``; ``num_beams > 1`` ``beam``
    (with ``length_penalty``, ``early_stopping`` and ``num_return_sequences``). Processor keywords
    become processor nodes in transformers' order, replacing a configured processor of the same
    name; a keyword at its "off" value (``top_p=1.0``, ``top_k=0``, ``temperature=1.0``...) removes
    it. Sampling-only keywords with the greedy or beam decoder are an error (they would change
    nothing), as are beam keywords with another decoder.
    """
    opts = {k: v for k, v in options.items() if v is not None}
    node = dict(decoder_node)
    do_sample, beams = opts.get("do_sample"), opts.get("num_beams")
    if beams is not None and (not isinstance(beams, int) or isinstance(beams, bool) or beams < 1):
        raise GenerationError(f"num_beams must be an integer >= 1, got {beams!r}")
    if do_sample and beams is not None and beams > 1:
        raise GenerationError("do_sample=True with num_beams > 1 (beam sampling) is not available: use one or the other")
    if do_sample is not None or beams is not None:
        if do_sample:
            wanted = "sampling"
        elif beams is not None and beams > 1:
            wanted = "beam"
        elif beams == 1 and do_sample is None and node.get("name") not in ("beam", "baseline:beam"):
            wanted = node.get("name", "greedy")
        else:
            wanted = "greedy"
        if wanted != node.get("name") and not str(node.get("name", "")).endswith(":" + wanted):
            node = {"name": wanted}
        if wanted == "beam":
            node["num_beams"] = beams if beams is not None else node.get("num_beams", 4)
    name = str(node.get("name", "")).split(":")[-1]
    for key in ("length_penalty", "early_stopping"):
        if key in opts:
            if name != "beam":
                raise GenerationError(f"{key} only applies to beam search (the decoder is '{node.get('name')}'; pass num_beams > 1)")
            node[key] = opts[key]
    if name in ("greedy", "beam"):
        given = [k for k in SAMPLING_ONLY if k in opts]
        if given:
            raise GenerationError(f"{', '.join(given)} only change(s) sampling, and the decoder is '{node.get('name')}': pass do_sample=True (or decoder='sampling')")
    procs = [dict(n) if isinstance(n, dict) else n for n in processor_nodes]  # callables pass through
    keep = opts.get("min_tokens_to_keep")
    for key, proc, fld, off in SHORTHAND_PROCESSORS:
        if key not in opts:
            continue
        procs = [n for n in procs if not (isinstance(n, dict) and str(n.get("name", "")).split(":")[-1] == proc)]
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GenerationError(f"{key} must be a number, got {value!r}")
        if off(value):
            continue
        new = {"name": proc, fld: value}
        if keep is not None and proc in _KEEP_FIELD:
            new["min_tokens_to_keep"] = keep
        procs.append(new)
    return node, procs


def prompt_lists(prompt_ids, attention_mask=None) -> list[list[int]]:
    """Prompts as lists of ids from one list, a list of lists, a 1-D or (B, L) tensor (or array).

    With ``attention_mask`` (like ``prompt_ids``; 1 = real token), masked positions (padding, on
    either side) are dropped.
    """
    if hasattr(prompt_ids, "tolist") and not isinstance(prompt_ids, list):
        if torch.is_tensor(prompt_ids) and prompt_ids.is_floating_point():
            raise GenerationError(f"prompt ids must be integers, got a {prompt_ids.dtype} tensor")
        if getattr(prompt_ids, "ndim", 1) not in (1, 2):
            raise GenerationError(f"prompt ids must be 1-D (one prompt) or 2-D (B, L), got shape {tuple(prompt_ids.shape)}")
        prompt_ids = prompt_ids.tolist()
    if not isinstance(prompt_ids, (list, tuple)):
        raise GenerationError(f"prompt ids must be a list of ids, a list of lists or a tensor, got {type(prompt_ids).__name__}")
    prompts = [prompt_ids] if prompt_ids and not isinstance(prompt_ids[0], (list, tuple)) and not hasattr(prompt_ids[0], "tolist") else prompt_ids
    prompts = [list(p.tolist() if hasattr(p, "tolist") else p) for p in prompts]
    if attention_mask is not None:
        mask = attention_mask.tolist() if hasattr(attention_mask, "tolist") else list(attention_mask)
        mask = [mask] if mask and not isinstance(mask[0], (list, tuple)) else mask
        if len(mask) != len(prompts) or any(len(m) != len(p) for m, p in zip(mask, prompts)):
            raise GenerationError("attention_mask must have the shape of the prompt ids")
        prompts = [[t for t, keep in zip(p, m) if keep] for p, m in zip(prompts, mask)]
    for i, p in enumerate(prompts):
        if any(isinstance(t, bool) or not isinstance(t, int) for t in p):
            raise GenerationError(f"prompt {i} holds something that is not an integer id: {p[:5]!r}...")
    return prompts


class Generator:
    """A loaded model with its tokenizer, default decoder and processors (what :func:`genloom.load` returns)."""

    def __init__(self, built, run_dir: Path | None = None):
        self.built = built
        self.model = built.model
        self.tokenizer = built.model.tokenizer
        self.ctx = built.ctx
        self.run_dir = run_dir

    # -- the configured defaults -----------------------------------------------------------
    def _decoder_node(self) -> dict:
        spec = self.model.decoder_spec
        return {"name": spec.record.qualified_name, **_fields(spec.config)} if spec is not None else {"name": "sampling"}

    def _processor_nodes(self) -> list:
        cfg = self.model.config
        specs = cfg.lists.get("processors", []) if cfg is not None else []
        return [{"name": s.record.qualified_name, **_fields(s.config)} for s in specs]

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """The end-of-sequence ids generation stops at (the tokenizer's set, else the context's id)."""
        ids = getattr(self.tokenizer, "eos_ids", None)
        return eos_tuple(ids) if ids else eos_tuple(self.ctx.get("eos_id"))

    @property
    def max_positions(self) -> int | None:
        """Positions the model can attend to (prompt + generated), when its backbone declares a limit."""
        limit = self.ctx.get("max_positions")
        return int(limit) if limit else None

    def default_max_new_tokens(self) -> int:
        raw = self.model.config.raw if self.model.config is not None else None
        node = raw.get("generate") if raw is not None else None
        value = node.get("max_new_tokens") if node is not None else None
        return int(value) if value is not None else 64

    def decoder(self, decoder=None, **options) -> Decoder:
        """Build a decoder by name, node or object (default: the config's ``decoder`` node)."""
        if isinstance(decoder, Decoder):
            return decoder
        if decoder is None and self.built.decoder is not None and not options:
            return self.built.decoder
        if decoder is None:
            node = self._decoder_node()
        elif isinstance(decoder, str):
            node = {"name": decoder}
        else:
            node = dict(decoder)
        node.update(options)
        return self.ctx.build("decoder", node, path="decoder")

    def generate(self, prompt_ids=None, max_new_tokens: int | None = None, decoder=None, *, processors=None, seed: int | None = None, stop_strings=(), attention_mask=None,
                 cache: str | None = None, compile: bool | None = None, source=None, progress=None, **options) -> GenerationResult:
        """Continue ``prompt_ids``; returns the generated ids per sequence and the metrics.

        ``prompt_ids``: one list of ids, a list of them, a 1-D tensor or a (B, L) tensor (with an
        optional ``attention_mask`` whose zeros mark padding). ``max_new_tokens`` defaults to the
        config's ``generate.max_new_tokens`` (else 64). ``decoder``: a name, a node or a decoder
        object (default: the config's). ``processors``: nodes or callables replacing the config's.
        ``seed``: None draws a fresh one; the seed used is ``result.metrics.seed``.
        ``cache`` ("dynamic" or "static") and ``compile`` default to the config's ``generate``
        section (see "Static cache and compiled decoding" in docs/generation.md).

        ``options`` are the transformers-style shorthand (``do_sample``, ``temperature``, ``top_k``,
        ``top_p``, ``min_p``, ``typical_p``, ``epsilon_cutoff``, ``eta_cutoff``,
        ``min_tokens_to_keep``, ``repetition_penalty``, ``no_repeat_ngram_size``, ``num_beams``,
        ``length_penalty``, ``early_stopping``, ``num_return_sequences``, ``eos_token_id``; see
        :func:`apply_shorthand` and docs/generation.md) or fields of the decoder node.

        ``source`` (a source-conditioned model only: its context holds ``source_length``): one list
        of ids or a list of them. Each source becomes the model's source block
        (:func:`genloom.core.data.source_block`) and decoding starts after it; ``prompt_ids``,
        when given, is a target prefix to continue (None: the target starts empty). The result
        holds the generated target only.

        ``progress(done, total)``: called after every commit with the tokens generated so far and
        the most there can be (``genloom generate`` draws a progress bar with it on a terminal).
        """
        if source is not None:
            prompt_ids = self.source_prompts(source, prompt_ids, attention_mask)
            attention_mask = None
        elif prompt_ids is None:
            raise GenerationError("nothing to condition on: pass prompt_ids (a prompt to continue) or source= (a source-conditioned model's source)")
        prompts = prompt_lists(prompt_ids, attention_mask)
        shorthand = {k: options.pop(k) for k in list(options) if k in SHORTHAND}
        explicit = max_new_tokens is not None
        max_new_tokens = max_new_tokens if explicit else self.default_max_new_tokens()
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise GenerationError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        n_return = shorthand.pop("num_return_sequences", None)
        n_return = 1 if n_return is None else n_return
        if isinstance(n_return, bool) or not isinstance(n_return, int) or n_return < 1:
            raise GenerationError(f"num_return_sequences must be an integer >= 1, got {n_return!r}")
        eos = shorthand.pop("eos_token_id", None)
        eos_ids = self.eos_ids if eos is None else eos_tuple(eos)
        limit = self.max_positions
        longest = max((len(p) for p in prompts), default=0)
        if limit is not None and not explicit:
            max_new_tokens = max(0, min(max_new_tokens, limit - longest))  # a default never exceeds the limit
        if limit is not None and longest + max_new_tokens > limit:
            raise GenerationError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the {limit} positions this model can attend to (max_positions)")
        dec, procs, n_return = self._resolve(decoder, processors, options, shorthand, n_return)
        check_memory(self.model, len(prompts) * n_return * int(getattr(dec, "num_beams", 1) or 1), longest, max_new_tokens,
                     what=f"{len(prompts)} prompt(s) x num_return_sequences {n_return}" + (f" x num_beams {dec.num_beams}" if getattr(dec, "num_beams", 1) > 1 else ""))
        if n_return > 1:
            prompts = [p for p in prompts for _ in range(n_return)]
        cache, compile = self._cache_options(cache, compile)
        return run(self.model, prompts, dec, max_new_tokens=max_new_tokens, processors=procs, seed=seed, eos_id=eos_ids, stop_strings=stop_strings, tokenizer=self.tokenizer, cache=cache, compile=compile,
                   progress=progress)

    def serve(self, requests, decoder=None, *, processors=None, max_batch_size: int | None = None, on_complete=None, **options):
        """Serve ``requests`` with continuous batching (:mod:`genloom.core.batching`): each request is
        prefilled when it arrives and joins one fused decode step with the others; finished ones
        leave the batch. Every request's output equals what :meth:`generate` gives it alone (greedy:
        token for token; sampling: with the request's seed).

        ``requests``: :class:`~genloom.core.batching.Request` objects or dicts of their fields
        (``prompt`` ids, ``max_new_tokens``, ``arrival``, ``seed``, ``id``, ``stop_strings``).
        ``decoder`` (a one-token decoder: name, node or object; default the config's), ``processors``
        and the processor shorthand in ``options`` (``temperature``, ``top_p``, ``do_sample``...) are
        those of :meth:`generate`; ``max_batch_size`` caps the live requests. Returns a
        :class:`~genloom.core.batching.ServeResult` (completions in request order, engine metrics).
        """
        from genloom.core.batching import ContinuousBatcher, Request, ServeResult

        reqs = [r if isinstance(r, Request) else Request(**r) for r in requests]
        limit = self.max_positions
        for i, r in enumerate(reqs):
            if limit is not None and len(r.prompt) + r.max_new_tokens > limit:
                raise GenerationError(f"request {r.id if r.id is not None else i}: prompt ({len(r.prompt)} tokens) + max_new_tokens ({r.max_new_tokens}) "
                                      f"exceeds the {limit} positions this model can attend to (max_positions)")
        shorthand = {k: options.pop(k) for k in list(options) if k in SHORTHAND}
        refused = [k for k in ("num_beams", "num_return_sequences", "length_penalty", "early_stopping") if shorthand.get(k) not in (None, 1)]
        if refused:
            raise GenerationError(f"{', '.join(refused)} do(es) not apply to continuous batching (one-token decoders only)")
        eos = shorthand.pop("eos_token_id", None)
        dec, procs, _ = self._resolve(decoder, processors, options, shorthand, 1)
        engine = ContinuousBatcher(self.model, dec, processors=procs, eos_id=self.eos_ids if eos is None else eos_tuple(eos),
                                   max_batch_size=max_batch_size, tokenizer=self.tokenizer)
        completions = engine.run(reqs, on_complete=on_complete)
        return ServeResult(completions, engine.metrics, self.tokenizer)

    def source_prompts(self, source, target_prefix=None, attention_mask=None) -> list[list[int]]:
        """The prompts that condition on ``source``: each source block followed by its target prefix."""
        from genloom.core.data import pad_id_of, source_block

        length = self.ctx.get("source_length")
        if not length:
            raise GenerationError("source= needs a source-conditioned model (its data publishes source_length); this model continues a prompt: pass prompt_ids")
        sources = prompt_lists(source) if len(source) else [[]]
        if target_prefix is None:
            prefixes = [[] for _ in sources]
        else:
            prefixes = prompt_lists(target_prefix, attention_mask)
            if len(prefixes) == 1 and len(sources) > 1:
                prefixes = prefixes * len(sources)
            if len(prefixes) != len(sources):
                raise GenerationError(f"{len(sources)} sources but {len(prefixes)} target prefixes (prompt_ids): give one prefix per source, or one for all")
        pad = pad_id_of(self.tokenizer)
        out = []
        for i, (s, p) in enumerate(zip(sources, prefixes)):
            try:
                out.append(source_block(s, int(length), pad) + p)
            except ValueError as exc:
                raise GenerationError(f"source {i}: {exc}") from None
        return out

    def _cache_options(self, cache, compile) -> tuple[str, bool]:
        """``cache`` and ``compile`` where given, else the config's ``generate`` section's."""
        config = getattr(self.model, "config", None)
        defaults = config.sections.get("generate") if config is not None else None
        cache = cache if cache is not None else getattr(defaults, "cache", "dynamic")
        compile = compile if compile is not None else getattr(defaults, "compile", False)
        return cache, bool(compile)

    def _resolve(self, decoder, processors, fields: dict, shorthand: dict, n_return: int):
        """The decoder object, processor callables and sequences per prompt for one call."""
        if isinstance(decoder, Decoder):
            if fields or any(k in shorthand for k in SHORTHAND_DECODER):
                raise GenerationError(f"{', '.join(list(fields) + [k for k in shorthand if k in SHORTHAND_DECODER])} cannot change a decoder object; pass a decoder name or node")
            node = None
        elif decoder is None:
            node = self._decoder_node() if (fields or shorthand or n_return > 1 or self.built.decoder is None) else None
        else:
            node = {"name": decoder} if isinstance(decoder, str) else dict(decoder)
        proc_nodes = self._processor_nodes() if processors is None else list(processors)
        if node is not None:
            node.update(fields)
            node, proc_nodes = apply_shorthand(shorthand, node, proc_nodes)
            if str(node.get("name", "")).split(":")[-1] == "beam":
                if n_return > 1 or "num_return_sequences" not in node:
                    node["num_return_sequences"] = n_return
                n_return = node["num_return_sequences"]
            try:
                dec = self.ctx.build("decoder", node, path="decoder")
            except ConfigError as exc:
                unknown = [k for k in fields if f"unknown field '{k}'" in str(exc)]
                if unknown:
                    raise GenerationError(f"unknown keyword '{unknown[0]}': not a field of decoder '{node.get('name')}' nor a shorthand keyword ({', '.join(SHORTHAND)}). {exc}") from None
                raise
        else:
            dec = decoder if decoder is not None else self.built.decoder
            if shorthand:
                _, proc_nodes = apply_shorthand(shorthand, {"name": ""}, proc_nodes)
            n_return = getattr(dec, "num_return_sequences", None) or n_return
        if processors is None and not shorthand:
            procs = list(self.built.processors)
        else:
            procs = [p if callable(p) else self.ctx.build("processor", p, path=f"processors[{i}]") for i, p in enumerate(proc_nodes)]
        return dec, procs, n_return

    def encode(self, data):
        return self.tokenizer.encode(data)


def _fields(cfg) -> dict:
    import dataclasses

    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)} if dataclasses.is_dataclass(cfg) else {}


def load(path_or_config, overrides: list[str] | None = None, *, seed: int | None = None, device=None, registry=None) -> Generator:
    """Load a model to generate with; what :func:`genloom.load` calls.

    ``path_or_config`` is a run directory, a ``model.safetensors``/``.ckpt`` file inside one (trained
    weights), or an untrained model: a config ``.yaml`` path or a config dict (as a YAML file would
    hold it). ``overrides`` are ``key=value`` strings applied to the config. An untrained model's
    weights are drawn from ``seed`` (default: the config's top-level ``seed``) without touching the
    global random state, so two loads of one config give identical weights. ``seed`` is refused for
    a trained run (its weights are fixed; pass ``seed=`` to :meth:`Generator.generate` for sampling).
    ``device`` moves the model there.
    """
    from genloom.core import config as config_mod
    from genloom.core import runio
    from genloom.core.model import assemble

    if isinstance(path_or_config, dict) or (isinstance(path_or_config, (str, Path)) and Path(path_or_config).suffix in (".yaml", ".yml")):
        if isinstance(path_or_config, dict):
            cfg = config_mod.compose(None, overrides, base=path_or_config)
        else:
            cfg = config_mod.compose(path_or_config, overrides)
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ConfigError(f"seed must be an integer, got {seed!r}", path="seed")
            cfg["seed"] = seed
        validated = config_mod.validate(cfg, registry)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(validated.run.seed)
            built = assemble(validated, registry)
        if device is not None:
            built.model.to(device)
        return Generator(built)
    if not isinstance(path_or_config, (str, Path)):
        raise TypeError(f"genloom.load takes a run directory, a weights/checkpoint file, a config .yaml or a config dict, got {type(path_or_config).__name__}")
    if seed is not None:
        raise ConfigError(f"seed= only sets an untrained model's initial weights (a config); '{path_or_config}' holds trained weights. Pass seed= to generate() to reproduce samples.")
    return runio.load_generator(path_or_config, overrides=overrides, registry=registry, device=device)


def load_model(source, overrides: list[str] | None = None, *, seed: int | None = None, expect_vocab_size: int | None = None, registry=None):
    """The :class:`~genloom.core.model.GenerativeModel` of a run directory, a config file, or a
    model config given as a dict (e.g. a draft model named inside a decoder's config).

    An untrained model (from a config) gets its initial weights from ``seed`` without touching the
    global random state; no data set is built. ``expect_vocab_size`` raises a ConfigError naming
    both sizes when the model's vocabulary differs (a draft must share the target's).
    """
    from pathlib import Path as _Path

    from genloom.core import config as config_mod
    from genloom.core.model import assemble

    if isinstance(source, (str, _Path)) and _Path(source).suffix not in (".yaml", ".yml"):
        model = load(source, overrides).model
    else:
        if isinstance(source, dict):
            cfg = config_mod.compose(None, overrides, base=source)
        else:
            cfg = config_mod.compose(source, overrides)
        validated = config_mod.validate(cfg, registry)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(validated.run.seed if seed is None else seed)
            model = assemble(validated, registry, data=False, fit_tokenizer=False).model
    if expect_vocab_size is not None and model.ctx.vocab_size != expect_vocab_size:
        raise ConfigError(f"the model has a vocabulary of {model.ctx.vocab_size} tokens but {expect_vocab_size} are expected (a draft model must share the target's tokenizer)")
    return model.eval()
