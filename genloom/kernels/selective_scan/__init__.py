"""The ``selective_scan`` op: Mamba's S6 scan, three backends with one call signature.

``backend(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
initial_state=None) -> (y (B, L, D), final_state (B, D, N))``

- ``reference`` (:mod:`.reference`): the step-by-step recurrence, the definition.
- ``chunked`` (:mod:`.chunked`): chunked parallel form in plain PyTorch (log-space segment sums
  inside a chunk, state carried across chunks); differentiable by autograd.
- ``triton`` (:mod:`.triton_kernel`): a Triton forward kernel; the backward recomputes through the
  chunked form. Usable on CUDA, or on CPU under Triton's interpreter (``TRITON_INTERPRET=1``).

The records are registered by ``genloom.kernels`` (factories ``make_reference``, ``make_chunked``,
``make_triton``); model code reaches them through ``genloom.core.kernels.call("selective_scan", ...)``.
:func:`selective_state_update` is the single-step form used for decoding.
"""

from __future__ import annotations

import torch

from genloom.kernels.selective_scan.chunked import DEFAULT_CHUNK_SIZE, selective_scan_chunked
from genloom.kernels.selective_scan.reference import selective_scan_reference, selective_state_update

__all__ = [
    "make_reference",
    "make_chunked",
    "make_triton",
    "selective_scan_reference",
    "selective_scan_chunked",
    "selective_state_update",
    "SelectiveScanBackend",
]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class SelectiveScanBackend:
    """One backend of the op: ``supports(device, dtype, **kw)`` and the call."""

    name = "reference"

    def supports(self, device: torch.device, dtype: torch.dtype, **kw) -> str | None:
        if dtype not in _FLOATS:
            return f"selective_scan needs a floating-point dtype, got {dtype}"
        return None

    def __call__(self, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)

    def __repr__(self) -> str:
        return f"selective_scan[{self.name}]"


class ReferenceBackend(SelectiveScanBackend):
    """The step-by-step recurrence. On a CPU it is also the fastest form (the parallel forms
    materialise (B, L, D, N) tensors), so it outranks ``chunked`` there."""

    def priority(self, device=None, **kw) -> int:
        return 15 if device is not None and torch.device(device).type == "cpu" else 0


class ChunkedBackend(SelectiveScanBackend):
    name = "chunked"

    def __init__(self, chunk_size: int | None = DEFAULT_CHUNK_SIZE):
        self.chunk_size = chunk_size

    def __call__(self, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, chunk_size=self.chunk_size)


class TritonBackend(SelectiveScanBackend):
    name = "triton"

    def supports(self, device: torch.device, dtype: torch.dtype, **kw) -> str | None:
        from genloom.kernels.selective_scan import triton_kernel

        reason = triton_kernel.triton_unavailable_reason()
        if reason:
            return reason
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return f"the triton selective_scan computes in float32; {dtype} inputs go to another backend"
        device = torch.device(device)
        interpreted = triton_kernel.interpreter_active()
        if device.type == "cuda":
            if not torch.cuda.is_available():
                return "CUDA is not available"
            return "triton was imported in interpreter mode (TRITON_INTERPRET=1); the compiled kernel is off" if interpreted else None
        if device.type == "cpu":
            if interpreted:
                return None
            if triton_kernel.interpreter_requested():
                return "TRITON_INTERPRET=1 was set after triton was imported; set it before the first import of triton"
            return "triton runs on CPU tensors only under its interpreter (set TRITON_INTERPRET=1 before importing triton)"
        return f"triton selective_scan does not run on device type '{device.type}'"

    def __call__(self, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
        from genloom.kernels.selective_scan.triton_kernel import selective_scan_triton

        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)


def make_reference(config=None, ctx=None) -> SelectiveScanBackend:
    """Factory of the ``reference`` backend (config and ctx are not used)."""
    return ReferenceBackend()


def make_chunked(config=None, ctx=None) -> ChunkedBackend:
    """Factory of the ``chunked`` backend (config and ctx are not used)."""
    return ChunkedBackend()


def make_triton(config=None, ctx=None) -> TritonBackend:
    """Factory of the ``triton`` backend (config and ctx are not used)."""
    return TritonBackend()
