"""The gated linear recurrence forward as a Triton kernel; the backward recomputes through the chunkwise form.

One program owns one (batch row, head) and a block of ``BLOCK_V`` value channels; it keeps the
(K, BLOCK_V) state in registers in float32 and walks the sequence once, reading q[t], k[t], g[t]
(K values, or one for a scalar decay) and v[t] (BLOCK_V values) per step and writing y[t]. Real
decays only (scalar or per key channel); complex inputs go to another backend.

Triton runs on CPU tensors only under its interpreter (``TRITON_INTERPRET=1`` set before triton is
first imported); the mode checks are shared with the selective_scan kernel.
"""

# No `from __future__ import annotations` here: Triton reads the kernel's annotations as objects.
import torch

from genloom.kernels.linear_recurrence.chunkwise import linear_recurrence_chunkwise
from genloom.kernels.linear_recurrence.reference import check_shapes
from genloom.kernels.selective_scan.triton_kernel import constexpr, interpreter_active, interpreter_requested, tl, triton_unavailable_reason  # noqa: F401

_JITTED = []


def _recurrence_forward_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, init_ptr, y_ptr, final_ptr,
    length, key_size, value_size,
    PER_CHANNEL: constexpr, HAS_INIT: constexpr, BLOCK_K: constexpr, BLOCK_V: constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # batch * heads + head
    block = tl.program_id(1)
    offs_k = tl.arange(0, BLOCK_K)
    offs_v = block * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_k = offs_k < key_size
    mask_v = offs_v < value_size
    mask_kv = mask_k[:, None] & mask_v[None, :]
    state_offs = row * key_size * value_size + offs_k[:, None] * value_size + offs_v[None, :]
    if HAS_INIT:
        state = tl.load(init_ptr + state_offs, mask=mask_kv, other=0.0).to(tl.float32)
    else:
        state = tl.zeros((BLOCK_K, BLOCK_V), dtype=tl.float32)
    row_k = row * length * key_size + offs_k
    row_v = row * length * value_size + offs_v
    for t in range(length):
        q = tl.load(q_ptr + row_k + t * key_size, mask=mask_k, other=0.0).to(tl.float32)
        k = tl.load(k_ptr + row_k + t * key_size, mask=mask_k, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + row_v + t * value_size, mask=mask_v, other=0.0).to(tl.float32)
        if PER_CHANNEL:
            decay = tl.exp(tl.load(g_ptr + row_k + t * key_size, mask=mask_k, other=0.0).to(tl.float32))
            state = decay[:, None] * state + k[:, None] * v[None, :]
        else:
            decay = tl.exp(tl.load(g_ptr + row * length + t).to(tl.float32))
            state = decay * state + k[:, None] * v[None, :]
        y = tl.sum(q[:, None] * state, axis=0)
        tl.store(y_ptr + row_v + t * value_size, y, mask=mask_v)
    tl.store(final_ptr + state_offs, state, mask=mask_kv)


def _kernel():
    if not _JITTED:
        import triton

        _JITTED.append(triton.jit(_recurrence_forward_kernel))
    return _JITTED[0]


def recurrence_forward(q, k, v, g, initial_state=None, block_v: int | None = None):
    """Launch the forward kernel (no autograd). Returns ``(y float32, final_state float32)``."""
    import triton

    check_shapes(q, k, v, g, initial_state)
    B, H, L, K = q.shape
    V = v.shape[-1]
    q, k, v, g = (t.contiguous() for t in (q, k, v, g))
    y = torch.empty(B, H, L, V, device=q.device, dtype=torch.float32)
    final = torch.empty(B, H, K, V, device=q.device, dtype=torch.float32)
    init = initial_state.to(torch.float32).contiguous() if initial_state is not None else None
    block_k = triton.next_power_of_2(K)
    if block_v is None:
        block_v = max(1, min(triton.next_power_of_2(V), max(1, 4096 // block_k), 64))
    grid = (B * H, triton.cdiv(V, block_v))
    _kernel()[grid](
        q, k, v, g, init if init is not None else final, y, final, L, K, V,
        PER_CHANNEL=g.dim() == 4, HAS_INIT=init is not None, BLOCK_K=block_k, BLOCK_V=block_v,
    )
    return y, final


class _TritonRecurrence(torch.autograd.Function):
    """Forward by the Triton kernel; backward by autograd through the chunkwise form (recomputed)."""

    @staticmethod
    def forward(ctx, q, k, v, g, initial_state):
        ctx.has_init = initial_state is not None
        ctx.save_for_backward(q, k, v, g, *([initial_state] if ctx.has_init else []))
        return recurrence_forward(q, k, v, g, initial_state)

    @staticmethod
    def backward(ctx, grad_y, grad_final):
        saved = list(ctx.saved_tensors)
        init = saved[4] if ctx.has_init else None
        with torch.enable_grad():
            leaves = [t.detach().float().requires_grad_(need) if t is not None else None for t, need in zip([*saved[:4], init], ctx.needs_input_grad)]
            y, final = linear_recurrence_chunkwise(*leaves[:4], initial_state=leaves[4])
            wanted = [t for t in leaves if t is not None and t.requires_grad]
            outputs, grads_out = [y], [grad_y]
            if grad_final is not None:
                outputs.append(final)
                grads_out.append(grad_final)
            grads = iter(torch.autograd.grad(outputs, wanted, grads_out, allow_unused=True)) if wanted else iter(())
        originals = [*saved[:4], init]
        return tuple(next(grads).to(o.dtype) if t is not None and t.requires_grad else None for t, o in zip(leaves, originals))


def linear_recurrence_triton(q, k, v, g, initial_state=None):
    """Gated linear recurrence with the Triton forward kernel (float32 results)."""
    return _TritonRecurrence.apply(q, k, v, g, initial_state)
