"""The ``linear_recurrence`` op: ``h[t] = exp(g[t]) * h[t-1] + k[t]^T v[t]``, ``y[t] = q[t] h[t]``.

``backend(q, k, v, g, initial_state=None) -> (y (B, H, L, V), final_state (B, H, K, V))`` with a
scalar (B, H, L), per-key-channel (B, H, L, K) or complex log decay ``g``.

- ``reference`` (:mod:`.reference`): the step-by-step recurrence, the definition.
- ``parallel`` (:mod:`.parallel`): ``((Q K^T) * D) V`` with the masked decay matrix, O(L^2).
- ``chunkwise`` (:mod:`.chunkwise`): parallel inside chunks, recurrent across, O(L).
- ``triton`` (:mod:`.triton_kernel`): Triton forward kernel (real decays), backward through the
  chunkwise form; CUDA, or CPU under ``TRITON_INTERPRET=1``.

This is the op behind retention (RetNet/ViR), GateLoop and gated linear attention. Model code
reaches it through ``genloom.core.kernels.call("linear_recurrence", q, k, v, g, initial_state=...)``.
"""

from __future__ import annotations

import torch

from genloom.kernels.linear_recurrence.chunkwise import DEFAULT_CHUNK_SIZE, linear_recurrence_chunkwise
from genloom.kernels.linear_recurrence.parallel import linear_recurrence_parallel
from genloom.kernels.linear_recurrence.reference import linear_recurrence_reference, linear_recurrence_step

__all__ = [
    "make_reference", "make_parallel", "make_chunkwise", "make_triton",
    "linear_recurrence_reference", "linear_recurrence_parallel", "linear_recurrence_chunkwise", "linear_recurrence_step",
]

_KINDS = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)


class LinearRecurrenceBackend:
    """One backend: ``supports(device, dtype, **kw)`` and the call."""

    name = "reference"

    def supports(self, device=None, dtype=None, **kw) -> str | None:
        if dtype is not None and dtype not in _KINDS:
            return f"linear_recurrence needs a floating-point or complex dtype, got {dtype}"
        return None

    def __call__(self, q, k, v, g, initial_state=None):
        return linear_recurrence_reference(q, k, v, g, initial_state)

    def __repr__(self) -> str:
        return f"linear_recurrence[{self.name}]"


class ParallelBackend(LinearRecurrenceBackend):
    name = "parallel"

    def __call__(self, q, k, v, g, initial_state=None):
        return linear_recurrence_parallel(q, k, v, g, initial_state)


class ChunkwiseBackend(LinearRecurrenceBackend):
    name = "chunkwise"

    def __init__(self, chunk_size: int | None = DEFAULT_CHUNK_SIZE):
        self.chunk_size = chunk_size

    def __call__(self, q, k, v, g, initial_state=None):
        return linear_recurrence_chunkwise(q, k, v, g, initial_state, chunk_size=self.chunk_size)


class TritonBackend(LinearRecurrenceBackend):
    name = "triton"

    def supports(self, device=None, dtype=None, **kw) -> str | None:
        from genloom.kernels.linear_recurrence import triton_kernel as tk

        reason = tk.triton_unavailable_reason()
        if reason:
            return reason
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return f"the triton linear_recurrence computes in float32 with real decays; {dtype} inputs go to another backend"
        device = torch.device(device) if device is not None else torch.device("cpu")
        interpreted = tk.interpreter_active()
        if device.type == "cuda":
            if not torch.cuda.is_available():
                return "CUDA is not available"
            return "triton was imported in interpreter mode (TRITON_INTERPRET=1); the compiled kernel is off" if interpreted else None
        if device.type == "cpu":
            if interpreted:
                return None
            if tk.interpreter_requested():
                return "TRITON_INTERPRET=1 was set after triton was imported; set it before the first import of triton"
            return "triton runs on CPU tensors only under its interpreter (set TRITON_INTERPRET=1 before importing triton)"
        return f"triton linear_recurrence does not run on device type '{device.type}'"

    def __call__(self, q, k, v, g, initial_state=None):
        from genloom.kernels.linear_recurrence.triton_kernel import linear_recurrence_triton

        if any(t is not None and (t.is_complex() or t.dtype == torch.float64) for t in (q, k, v, g, initial_state)):
            # the dispatcher sees only q's dtype: a complex or float64 decay/state goes to the chunkwise form
            return linear_recurrence_chunkwise(q, k, v, g, initial_state)
        return linear_recurrence_triton(q, k, v, g, initial_state)


def make_reference(config=None, ctx=None):
    """Factory of the ``reference`` backend."""
    return LinearRecurrenceBackend()


def make_parallel(config=None, ctx=None):
    """Factory of the ``parallel`` backend."""
    return ParallelBackend()


def make_chunkwise(config=None, ctx=None):
    """Factory of the ``chunkwise`` backend."""
    return ChunkwiseBackend()


def make_triton(config=None, ctx=None):
    """Factory of the ``triton`` backend."""
    return TritonBackend()
