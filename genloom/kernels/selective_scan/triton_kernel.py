"""The selective scan forward as a Triton kernel; the backward recomputes through the chunked form.

One program owns one batch element and a block of ``BLOCK_D`` channels; it keeps the
(BLOCK_D, N) state in registers and walks the sequence once, reading u, delta, z (one value per
channel) and B, C (N values) per step and writing y. Each input is read once and y written once,
so the kernel is bound by memory bandwidth (see benchmarks/scan.py). The state is float32.

Triton runs kernels on CPU tensors only through its interpreter (numpy), which it turns on when
the environment variable ``TRITON_INTERPRET=1`` is set *before triton is first imported*: its own
``tl.sum`` and friends are decorated at import, so setting the variable later does not work (the
kernel fails with "Cannot call @triton.jit'd outside of the scope of a kernel").
:func:`interpreter_active` reads which mode the imported triton is in, and the backend's
``supports`` says why it cannot run when the modes do not fit.
"""

# No `from __future__ import annotations` here: Triton reads the kernel's annotations as objects.
import os

import torch

from genloom.kernels.selective_scan.chunked import selective_scan_chunked
from genloom.kernels.selective_scan.reference import check_shapes

try:  # module-level so the kernel body can name `tl`; a missing triton is reported by supports()
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    tl = None
constexpr = tl.constexpr if tl is not None else "constexpr"

_JITTED = []


def interpreter_requested() -> bool:
    """True when the environment asks for Triton's interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def interpreter_active() -> bool:
    """True when the imported triton runs kernels through its interpreter (decided at its import)."""
    if tl is None:
        return False
    from triton.language import standard

    return type(standard.sum).__name__ == "InterpretedFunction"


def triton_unavailable_reason() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as error:  # ImportError, or a broken install
        return f"triton does not import ({type(error).__name__}: {error})"
    return None


def _scan_forward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr, y_ptr, final_ptr,
    length, channels, state_size,
    HAS_D: constexpr, HAS_Z: constexpr, HAS_BIAS: constexpr, HAS_INIT: constexpr,
    SOFTPLUS: constexpr, BLOCK_D: constexpr, BLOCK_N: constexpr,
):
    batch = tl.program_id(0).to(tl.int64)  # offsets past 2**31 elements stay exact
    block = tl.program_id(1)
    offs_d = block * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < channels
    mask_n = offs_n < state_size
    mask_dn = mask_d[:, None] & mask_n[None, :]

    A = tl.load(A_ptr + offs_d[:, None] * state_size + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        skip = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    state_offs = batch * channels * state_size + offs_d[:, None] * state_size + offs_n[None, :]
    if HAS_INIT:
        state = tl.load(init_ptr + state_offs, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        state = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)

    row_d = batch * length * channels + offs_d  # u, delta, z, y at step t: row_d + t * channels
    row_n = batch * length * state_size + offs_n  # B, C at step t: row_n + t * state_size
    for t in range(length):
        u = tl.load(u_ptr + row_d + t * channels, mask=mask_d, other=0.0).to(tl.float32)
        step = tl.load(delta_ptr + row_d + t * channels, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_BIAS:
            step = step + bias
        if SOFTPLUS:
            step = tl.where(step <= 20.0, tl.log(1.0 + tl.exp(step)), step)
        B_t = tl.load(B_ptr + row_n + t * state_size, mask=mask_n, other=0.0).to(tl.float32)
        C_t = tl.load(C_ptr + row_n + t * state_size, mask=mask_n, other=0.0).to(tl.float32)
        state = tl.exp(step[:, None] * A) * state + (step * u)[:, None] * B_t[None, :]
        y = tl.sum(state * C_t[None, :], axis=1)
        if HAS_D:
            y = y + skip * u
        if HAS_Z:
            gate = tl.load(z_ptr + row_d + t * channels, mask=mask_d, other=0.0).to(tl.float32)
            y = y * gate * tl.sigmoid(gate)
        tl.store(y_ptr + row_d + t * channels, y.to(y_ptr.dtype.element_ty), mask=mask_d)
    tl.store(final_ptr + state_offs, state, mask=mask_dn)


def _kernel():
    """The jitted kernel (compiled, or interpreted under TRITON_INTERPRET=1), built on first use."""
    if not _JITTED:
        import triton

        _JITTED.append(triton.jit(_scan_forward_kernel))
    return _JITTED[0]


def scan_forward(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None, block_d: int | None = None):
    """Launch the forward kernel (no autograd). Returns ``(y in u.dtype, final_state float32)``."""
    import triton

    check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    batch, length, channels = u.shape
    state_size = A.shape[1]
    u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
    z = z.contiguous() if z is not None else None
    y = torch.empty_like(u)
    final = torch.empty(batch, channels, state_size, device=u.device, dtype=torch.float32)
    init = initial_state.to(torch.float32).contiguous() if initial_state is not None else None
    block_n = triton.next_power_of_2(state_size)
    if block_d is None:
        block_d = max(1, min(triton.next_power_of_2(channels), max(1, 2048 // block_n), 64))
    grid = (batch, triton.cdiv(channels, block_d))
    placeholder = final  # any tensor; never read when the matching HAS_* flag is off
    _kernel()[grid](
        u, delta, A.to(torch.float32).contiguous(), B, C,
        D.contiguous() if D is not None else placeholder,
        z if z is not None else placeholder,
        delta_bias.contiguous() if delta_bias is not None else placeholder,
        init if init is not None else placeholder,
        y, final,
        length, channels, state_size,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, HAS_INIT=init is not None,
        SOFTPLUS=bool(delta_softplus), BLOCK_D=block_d, BLOCK_N=block_n,
    )
    return y, final


_ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


class _TritonScan(torch.autograd.Function):
    """Forward by the Triton kernel; backward by autograd through the chunked form (recomputed)."""

    @staticmethod
    def forward(ctx, delta_softplus, u, delta, A, B, C, D, z, delta_bias, initial_state):
        tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
        ctx.delta_softplus = delta_softplus
        ctx.present = tuple(t is not None for t in tensors)
        ctx.save_for_backward(*(t for t in tensors if t is not None))
        y, final = scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
        return y, final

    @staticmethod
    def backward(ctx, grad_y, grad_final):
        saved = iter(ctx.saved_tensors)
        tensors = [next(saved) if present else None for present in ctx.present]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(need) if t is not None else None for t, need in zip(tensors, ctx.needs_input_grad[1:])]
            y, final = selective_scan_chunked(*leaves[:8], delta_softplus=ctx.delta_softplus, initial_state=leaves[8])
            wanted = [t for t in leaves if t is not None and t.requires_grad]
            outputs, grads_out = [y], [grad_y]
            if grad_final is not None:
                outputs.append(final)
                grads_out.append(grad_final.to(final.dtype))
            grads = iter(torch.autograd.grad(outputs, wanted, grads_out, allow_unused=True)) if wanted else iter(())
        result = [next(grads) if t is not None and t.requires_grad else None for t in leaves]
        return (None, *result)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """Selective scan with the Triton forward kernel. Same arguments and results as the reference
    (the final state is float32)."""
    return _TritonScan.apply(bool(delta_softplus), u, delta, A, B, C, D, z, delta_bias, initial_state)
