"""Flover: temporal fusion of autoregressive requests that arrive at different times.

What the paper does. Requests reach an inference server at random times and need different
numbers of tokens. Dynamic batching waits to gather a batch and then runs it until its longest
member finishes (late requests wait, finished ones keep occupying the batch); concurrent instances
contend for memory bandwidth. Flover splits each request into pre-processing (the prompt) and
token generation, and a scheduler fuses the token-generation steps of every live request into one
step over a shared batch: a new request joins at the next step after its prompt is processed,
without restarting anyone, and a finished request's memory is evicted at once by a fast
reordering of the key/value buffers, so the active batch is always exactly the live requests.

What this implementation does. The engine is the core's continuous batcher
(:class:`genloom.core.batching.ContinuousBatcher`; it is the runtime of ``genloom serve``):
each request is prefilled alone, its state's row is appended to the batch state
(``State.extend``), one fused forward pass advances every live request per step, and finished
requests are evicted with ``State.reorder`` followed by the cache's ``compact`` (the buffer
reordering: each row's valid key/value slots move left and the columns no live request uses are
reclaimed). Decoder ``flover`` runs a batch of prompts through it as a request stream: prompt b
arrives at step ``b * arrival_interval`` (0: all at once), at most ``max_batch_size`` are live.
With ``greedy: true`` every request's output equals its solo greedy output token for token; with
``greedy: false`` request b samples with its own generator, seeded from the session's, and its
output equals a solo sampling run with that seed (so its law is the target's sampling law).
Metrics (``metrics.extra``): fused steps, prefills, row-steps, padded slots, peak batch,
evictions, tokens per fused step, and each request's arrival, admission and finish step.

What it simplifies. One process and one device: no tensor parallelism, no CUDA streams; the
scheduler is first come, first served; arrivals are counted in engine steps, not wall-clock time;
prompts are prefilled one by one (not chunked or batched with the decode step). Works for every
backbone whose state can ``extend`` (transformer, Mamba, the toolkit's recurrent state); others
are rebuilt by a prefill of the live histories at each admission (exact, slower).
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeInt, PositiveInt

_P = "genloom.plugins.flover"

PAPER = records.Paper(
    title="Flover: A Temporal Fusion Framework for Efficient Autoregressive Model Parallel Inference",
    year=2023,
    arxiv="2305.13484",
)


@dataclass
class FloverConfig:
    """Temporally fused decoding of a batch of prompts treated as a stream of requests."""

    greedy: bool = True
    """Choose the most likely token (output equals solo greedy decoding); false: sample, each request with its own seeded generator."""
    arrival_interval: NonNegativeInt = 0
    """Engine steps between the arrivals of consecutive prompts of the batch (0: all arrive at step 0)."""
    max_batch_size: PositiveInt | None = None
    """Live requests at most; later arrivals wait for an eviction (None: no limit)."""


@hookimpl
def genloom_decoders():
    return [
        records.decoder(
            "flover",
            f"{_P}.decoder:build",
            FloverConfig,
            "Flover: requests arriving at different steps share one fused decode step; finished ones are evicted (exact: solo output).",
            PAPER,
        )
    ]
