"""Continuous batching: requests that arrive at different steps share one fused decode step.

The engine (:class:`ContinuousBatcher`) keeps a batch of live requests and one incremental state
whose rows are those requests. Time is counted in engine steps; one step:

1. **admit** every waiting request whose ``arrival`` step has come (while the batch has room):
   prefill it on its own, exactly as a solo :func:`~genloom.core.generation.run` would (its own
   batch-1 :class:`~genloom.core.generation.Session`, its own seeded generator), then append its
   state's row to the batch state (:meth:`State.extend`; a state that cannot extend is rebuilt by
   prefilling every live sequence again, which is exact but costs a forward pass);
2. **choose** one token per live request from its own next-token logits, through its own session:
   the logits processors see that request's history only, the decoder's ``choose`` draws with
   that request's generator, and the session applies its stop rules (EOS, stop strings, budget);
3. **evict** the requests that finished (``State.reorder`` to the rows that remain, then
   ``compact`` when the state has it), so the batch is always exactly the live requests;
4. **fuse**: one forward pass feeds every live request's new token through the batch state, and
   row i's logits become request i's next-token logits.

No request waits for another to finish and none is restarted when another joins or leaves (the
temporal fusion of Flover). Because every row sees only its own tokens (the batch state keeps each
row's slots apart) and draws from its own generator, each request's output equals its solo output:
greedy token for token, sampling with the same seed the same tokens (up to floating-point
reassociation between batch shapes; exact in float64 on the tested backbones).

The decoder must be a one-token decoder: one that overrides at most ``choose`` (sampling, greedy,
or a decoder with its own selection rule); decoders that propose several tokens (speculative,
beam) run their own loops and are refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from genloom.core.errors import GenerationError
from genloom.core.generation import Commit, Decoder, GenerationMetrics, Session, fresh_seed, model_device, pad_left


@dataclass
class Request:
    """One generation request for the engine."""

    prompt: list[int]
    """Prompt ids (at least one)."""
    max_new_tokens: int = 64
    """Tokens to generate at most (0: the request completes at admission, empty)."""
    arrival: int = 0
    """Engine step at which the request arrives; it is admitted at that step or later (batch full)."""
    seed: int | None = 0
    """Seed of the request's own generator (None: a fresh one, reported in the completion)."""
    id: Any = None
    """The caller's name for the request (default: its submission index)."""
    stop_strings: tuple[str, ...] = ()
    """Text that ends the request once generated (needs the engine's tokenizer)."""


@dataclass
class Completion:
    """What a request produced, and when (in engine steps)."""

    id: Any
    index: int
    """Submission index (completions come back in this order from :meth:`ContinuousBatcher.run`)."""
    ids: list[int]
    seed: int
    arrival: int
    admitted: int
    finished: int
    metrics: GenerationMetrics
    """The request's own metrics (its forward passes are those a solo run would make)."""


@dataclass
class BatchingMetrics:
    """Load-independent figures of one engine run (plus wall time)."""

    steps: int = 0
    """Engine steps, idle ones (no live request) included."""
    fused_steps: int = 0
    """Fused decode forward passes (one per step with live requests that did not all finish)."""
    prefills: int = 0
    """Per-request prefill forward passes."""
    rebuilds: int = 0
    """Batch-state rebuilds (forward passes over every live history) for states without ``extend``."""
    tokens_generated: int = 0
    row_steps: int = 0
    """Rows computed by the fused steps (the sum of the batch sizes)."""
    padded_slots: int = 0
    """Cache slots the fused steps attended over that held no token of their row (KV caches only)."""
    peak_batch: int = 0
    evictions: int = 0
    seconds: float = 0.0

    @property
    def forward_passes(self) -> int:
        return self.fused_steps + self.prefills + self.rebuilds

    @property
    def tokens_per_fused_step(self) -> float | None:
        """Tokens the fused steps produced per pass (every live request adds one per step)."""
        return self.row_steps / self.fused_steps if self.fused_steps else None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_generated / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps, "fused_steps": self.fused_steps, "prefills": self.prefills, "rebuilds": self.rebuilds,
            "forward_passes": self.forward_passes, "tokens_generated": self.tokens_generated, "row_steps": self.row_steps,
            "padded_slots": self.padded_slots, "peak_batch": self.peak_batch, "evictions": self.evictions,
            "tokens_per_fused_step": self.tokens_per_fused_step, "seconds": self.seconds, "tokens_per_second": self.tokens_per_second,
        }


@dataclass
class ServeResult:
    """The completions of a served list of requests (in submission order) and the engine's figures."""

    completions: list[Completion]
    metrics: BatchingMetrics
    tokenizer: Any = None

    @property
    def ids(self) -> list[list[int]]:
        return [c.ids for c in self.completions]

    def decode(self) -> list:
        """Each completion decoded by the model's tokenizer."""
        if self.tokenizer is None:
            raise ValueError("no tokenizer to decode with")
        return [self.tokenizer.decode(c.ids) for c in self.completions]


ONE_TOKEN_METHODS = ("start", "propose", "verify", "advance")


def check_one_token(decoder: Decoder) -> None:
    """Refuse a decoder that changes more than ``choose`` (it runs its own multi-token loop)."""
    changed = [m for m in ONE_TOKEN_METHODS if getattr(type(decoder), m) is not getattr(Decoder, m)]
    if changed:
        raise GenerationError(f"continuous batching runs one-token decoders (sampling, greedy, or any decoder that only changes choose); "
                              f"{type(decoder).__name__} overrides {', '.join(changed)}")


@dataclass
class _Live:
    index: int
    request: Request
    session: Session
    seed: int
    admitted: int


class ContinuousBatcher:
    """Decode requests that arrive at different steps in one fused batch (see the module docstring).

    ``decoder``: a one-token :class:`~genloom.core.generation.Decoder` (None: ancestral sampling);
    ``processors``: logits processors applied to every request (each sees its own history);
    ``eos_id``: one id or a collection; ``max_batch_size``: live requests at most (None: no limit);
    ``tokenizer``: needed for stop strings and kept for decoding.

    Use :meth:`submit` then :meth:`step` (returns the completions of that step) to drive it by
    hand, or :meth:`run` to serve a list of requests to the end.
    """

    def __init__(self, model, decoder: Decoder | None = None, *, processors=(), eos_id=None, max_batch_size: int | None = None, tokenizer=None):
        decoder = decoder if decoder is not None else Decoder()
        check_one_token(decoder)
        if max_batch_size is not None and (isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1):
            raise GenerationError(f"max_batch_size must be an integer >= 1 (or None: no limit), got {max_batch_size!r}")
        self.model = model
        self.decoder = decoder
        self.processors = list(processors)
        self.eos_id = eos_id
        self.max_batch_size = max_batch_size
        self.tokenizer = tokenizer
        self.device = model_device(model)
        self.clock = 0
        """The current engine step."""
        self.metrics = BatchingMetrics()
        self.live: list[_Live] = []
        """The live requests, in the order of the batch state's rows."""
        self.state = None
        self.batch_sizes: list[int] = []
        """The batch size of every fused step, in order (tests and benchmarks read it)."""
        self.fused_clocks: list[int] = []
        """The engine step of every fused step (``batch_sizes[i]`` rows at step ``fused_clocks[i]``)."""
        self._waiting: list[tuple[int, int, Request]] = []
        self._submitted = 0

    # -- the queue ---------------------------------------------------------------------------
    def submit(self, request: Request) -> int:
        """Queue a request; returns its submission index (its id when it has none)."""
        if not isinstance(request, Request):
            raise GenerationError(f"submit takes a Request, got {type(request).__name__}")
        check_request(request, where=f"request {request.id if request.id is not None else self._submitted}")
        if request.stop_strings and self.tokenizer is None:
            raise GenerationError("stop_strings need the engine's tokenizer (pass tokenizer=)")
        index = self._submitted
        self._submitted += 1
        self._waiting.append((request.arrival, index, request))
        self._waiting.sort(key=lambda w: (w[0], w[1]))
        return index

    @property
    def pending(self) -> int:
        """Requests submitted but not admitted yet."""
        return len(self._waiting)

    def done(self) -> bool:
        return not self._waiting and not self.live

    # -- one engine step ---------------------------------------------------------------------
    def step(self) -> list[Completion]:
        """Run one engine step (admit, choose, evict, fuse); returns the requests that finished in it."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                finished = self._admit()
                if self.live:
                    finished += self._choose_and_evict()
                    if self.live:
                        self._fuse()
        finally:
            self.model.train(was_training)
        self.clock += 1
        self.metrics.steps += 1
        return finished

    def _admit(self) -> list[Completion]:
        finished, admitted = [], []
        while self._waiting and self._waiting[0][0] <= self.clock and (self.max_batch_size is None or len(self.live) < self.max_batch_size):
            _, index, request = self._waiting.pop(0)
            seed = fresh_seed() if request.seed is None else int(request.seed)
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
            session = Session(self.model, [request.prompt], max_new_tokens=request.max_new_tokens, processors=self.processors, generator=generator,
                              eos_id=self.eos_id, stop_strings=request.stop_strings, tokenizer=self.tokenizer, device=self.device)
            session.metrics.seed = seed
            live = _Live(index, request, session, seed, self.clock)
            if session.done():  # max_new_tokens == 0: nothing to decode
                finished.append(self._complete(live))
                continue
            self.decoder.start(session)  # the solo prefill
            self.metrics.prefills += 1
            self.live.append(live)
            admitted.append(live)
        if admitted:
            self._merge(admitted)
        self.metrics.peak_batch = max(self.metrics.peak_batch, len(self.live))
        return finished

    def _merge(self, admitted: list[_Live]) -> None:
        """Append the admitted requests' prefilled states to the batch state."""
        states = ([self.state] if self.state is not None else []) + [live.session.state for live in admitted]
        merged = states[0]
        try:
            for other in states[1:]:
                merged.extend(other)
        except NotImplementedError:
            merged = self._rebuild()
        self.state = merged
        for live in admitted:
            live.session.state = None  # the batch state owns the row now

    def _rebuild(self):
        """A fresh batch state that has consumed every live request's prompt and generated tokens."""
        histories = [list(live.request.prompt) + live.session.generated[0] for live in self.live]
        ids, valid = pad_left(histories, device=self.device)
        extra = max(live.request.max_new_tokens - len(live.session.generated[0]) for live in self.live)
        state = self.model.init_state(len(histories), ids.shape[1] + extra + 16)
        self.model(ids, state=state, valid=valid)
        self.metrics.rebuilds += 1
        return state

    def _choose_and_evict(self) -> list[Completion]:
        finished, keep = [], []
        for row, live in enumerate(self.live):
            session = live.session
            logits = session.process(session.scratch["next_logits"])
            token = self.decoder.choose(session, logits)
            kept = session.commit(Commit.all(token))
            self.metrics.tokens_generated += int(kept.sum())
            if session.done():
                finished.append(self._complete(live))
            else:
                keep.append(row)
        if len(keep) < len(self.live):
            self.metrics.evictions += len(self.live) - len(keep)
            self.live = [self.live[row] for row in keep]
            if self.live:
                self.state.reorder(torch.tensor(keep, dtype=torch.long, device=self.device))
                compact = getattr(self.state, "compact", None)
                if callable(compact):
                    compact()
            else:
                self.state = None
        return finished

    def _fuse(self) -> None:
        tokens = torch.tensor([[live.session.generated[0][-1]] for live in self.live], dtype=torch.long, device=self.device)
        batch = len(self.live)
        self.metrics.fused_steps += 1
        self.metrics.row_steps += batch
        self.batch_sizes.append(batch)
        self.fused_clocks.append(self.clock)
        logits = self.model(tokens, state=self.state)
        valid = getattr(self.state, "valid", None)
        used = getattr(self.state, "used", None)
        if torch.is_tensor(valid) and isinstance(used, int):
            self.metrics.padded_slots += int(batch * used - valid[:, :used].sum())
        for row, live in enumerate(self.live):
            live.session.metrics.count_forward("target")
            live.session.scratch["next_logits"] = logits[row:row + 1, -1]

    def _complete(self, live: _Live) -> Completion:
        result = live.session.result()
        return Completion(id=live.request.id if live.request.id is not None else live.index, index=live.index, ids=result.ids[0], seed=live.seed,
                          arrival=live.request.arrival, admitted=live.admitted, finished=self.clock, metrics=result.metrics)

    # -- serving a list ----------------------------------------------------------------------
    def run(self, requests: Iterable[Request], *, on_complete: Callable[[Completion], None] | None = None) -> list[Completion]:
        """Serve ``requests`` to the end; returns their completions in submission order.

        Steps in which nothing is live and the next request has not arrived yet are skipped
        (the clock jumps to the next arrival). ``on_complete`` is called with each completion as
        it finishes (a progress bar, a streaming writer).
        """
        start = self._submitted
        for request in requests:
            self.submit(request)
        done: list[Completion] = []
        t0 = time.perf_counter()
        while not self.done():
            if not self.live and self._waiting[0][0] > self.clock:  # idle until the next arrival
                skipped = self._waiting[0][0] - self.clock
                self.clock += skipped
                self.metrics.steps += skipped
            for completion in self.step():
                done.append(completion)
                if on_complete is not None:
                    on_complete(completion)
        self.metrics.seconds += time.perf_counter() - t0
        return sorted((c for c in done if c.index >= start), key=lambda c: c.index)

    def __repr__(self) -> str:
        return f"ContinuousBatcher(live={len(self.live)}, pending={self.pending}, clock={self.clock})"


def check_request(request: Request, where: str = "request") -> None:
    """Raise a GenerationError naming the field when a request is malformed."""
    prompt = request.prompt
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise GenerationError(f"{where}: field 'prompt' must be a non-empty list of token ids")
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in prompt):
        raise GenerationError(f"{where}: field 'prompt' must hold integer ids >= 0")
    for name, low in (("max_new_tokens", 0), ("arrival", 0)):
        value = getattr(request, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise GenerationError(f"{where}: field '{name}' must be an integer >= {low}, got {value!r}")
    if request.seed is not None and (isinstance(request.seed, bool) or not isinstance(request.seed, int) or request.seed < 0):
        raise GenerationError(f"{where}: field 'seed' must be an integer >= 0 (or null: a fresh seed), got {request.seed!r}")
    if not isinstance(request.stop_strings, (list, tuple)) or any(not isinstance(s, str) for s in request.stop_strings):
        raise GenerationError(f"{where}: field 'stop' must be a list of strings, got {request.stop_strings!r}")
