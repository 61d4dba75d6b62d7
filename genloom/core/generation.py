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

from genloom.core.errors import ConfigError


@dataclass
class Commit:
    """What a verify step keeps: ``tokens[b, :counts[b]]`` are appended to sequence b."""

    tokens: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def all(cls, tokens: torch.Tensor) -> "Commit":
        tokens = tokens if tokens.dim() == 2 else tokens[:, None]
        return cls(tokens, torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long, device=tokens.device))


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


class Session:
    """The state shared by every decoding strategy during one ``generate`` call."""

    def __init__(self, model, prompts, *, max_new_tokens: int, processors=(), generator=None, eos_id=None, stop_strings=(), tokenizer=None, device=None, pad_id: int = 0):
        self.model = model
        self.device = device or model_device(model)
        self.prompt_ids, self.prompt_valid = pad_left(prompts, pad_id, self.device)
        self.batch_size = self.prompt_ids.shape[0]
        self.max_new_tokens = max_new_tokens
        self.processors = list(processors)
        self.generator = generator
        self.eos_id = eos_id
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
        if self.eos_id is not None and token == self.eos_id:
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


class Decoder:
    """A decoding strategy on the shared loop. Subclasses override what they change.

    The default implements plain autoregressive decoding with a KV cache: ``start`` prefills the
    prompt, ``propose`` picks one token from the processed next-token logits with :meth:`choose`,
    ``verify`` accepts it, ``advance`` feeds it to the model.
    """

    def __init__(self, config=None, ctx=None):
        self.config = config
        self.ctx = ctx

    # prefill ------------------------------------------------------------------------------
    def start(self, session: Session) -> None:
        capacity = session.prompt_ids.shape[1] + session.max_new_tokens + 16
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


def run(model, prompts, decoder: Decoder, *, max_new_tokens: int = 64, processors=(), seed: int | None = 0, eos_id=None, stop_strings=(), tokenizer=None) -> GenerationResult:
    """Generate continuations of ``prompts`` (lists of ids) with ``decoder`` on the shared loop."""
    device = model_device(model)
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    was_training = model.training
    model.eval()
    session = Session(model, prompts, max_new_tokens=max_new_tokens, processors=processors, generator=generator, eos_id=eos_id, stop_strings=stop_strings, tokenizer=tokenizer, device=device)
    try:
        with torch.inference_mode():
            if not session.done():
                decoder.start(session)
            while not session.done():
                proposal = decoder.propose(session)
                commit = decoder.verify(session, proposal)
                session.commit(commit)
                if session.done():
                    break
                decoder.advance(session, commit)
    finally:
        model.train(was_training)
    return session.result()


# ---------------------------------------------------------------------------------------------
# Loading trained models
# ---------------------------------------------------------------------------------------------

class Generator:
    """A loaded model with its tokenizer, default decoder and processors (what :func:`genloom.load` returns)."""

    def __init__(self, built, run_dir: Path | None = None):
        self.built = built
        self.model = built.model
        self.tokenizer = built.model.tokenizer
        self.ctx = built.ctx
        self.run_dir = run_dir

    def decoder(self, decoder=None, **options) -> Decoder:
        """Build a decoder by name, node or object (default: the config's ``decoder`` node)."""
        if isinstance(decoder, Decoder):
            return decoder
        if decoder is None and self.built.decoder is not None and not options:
            return self.built.decoder
        if decoder is None:
            spec = self.model.decoder_spec
            node = {"name": spec.record.qualified_name, **_fields(spec.config)} if spec is not None else {"name": "sampling"}
        elif isinstance(decoder, str):
            node = {"name": decoder}
        else:
            node = dict(decoder)
        node.update(options)
        return self.ctx.build("decoder", node, path="decoder")

    def generate(self, prompt_ids, max_new_tokens: int = 64, decoder=None, *, processors=None, seed: int | None = 0, stop_strings=(), **options) -> GenerationResult:
        """Continue ``prompt_ids`` (one list of ids, or a list of them); returns ids per sequence and metrics."""
        prompts = prompt_ids
        if prompts and isinstance(prompts[0], int):
            prompts = [prompts]
        procs = self.built.processors if processors is None else [p if callable(p) else self.ctx.build("processor", p) for p in processors]
        dec = self.decoder(decoder, **options)
        return run(self.model, prompts, dec, max_new_tokens=max_new_tokens, processors=procs, seed=seed, eos_id=self.ctx.get("eos_id"), stop_strings=stop_strings, tokenizer=self.tokenizer)

    def encode(self, data):
        return self.tokenizer.encode(data)


def _fields(cfg) -> dict:
    import dataclasses

    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)} if dataclasses.is_dataclass(cfg) else {}


def load(path_or_config, overrides: list[str] | None = None, **kw) -> Generator:
    """Load a run directory, a ``.safetensors``/``.ckpt`` file inside one, or an untrained config."""
    from genloom.core import runio

    return runio.load_generator(path_or_config, overrides=overrides, **kw)


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
