"""The ``attention`` op and its backends.

Signature shared by every backend::

    attention(q, k, v, *, pattern=CAUSAL, q_pos=None, kv_pos=None, kv_valid=None, scale=None)

``q`` is (B, Hq, Lq, Dh); ``k``/``v`` are (B, Hkv, Lk, Dh) with Hq a multiple of Hkv (grouped-query
attention). ``q_pos`` (B, Lq) and ``kv_pos`` (B, Lk) are sequence positions (default: the queries
are the last Lq of Lk contiguous positions); ``kv_valid`` (B, Lk) marks real keys (padding and
rolled-back cache slots are False). A query row with no allowed key returns zeros in every backend.
A pattern with ``per_row = True`` (a token tree, whose prefix length differs per row) is called as
``pattern.allowed(q_pos, kv_pos, row=batch_index)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genloom.core.pattern import CAUSAL, AttentionPattern


def _positions(q, k, q_pos, kv_pos):
    B, Lq, Lk = q.shape[0], q.shape[2], k.shape[2]
    if kv_pos is None:
        kv_pos = torch.arange(Lk, device=q.device).expand(B, Lk)
    if q_pos is None:
        q_pos = torch.arange(Lk - Lq, Lk, device=q.device).expand(B, Lq)
    return q_pos, kv_pos


def dense_mask(pattern: AttentionPattern, q, k, q_pos=None, kv_pos=None, kv_valid=None) -> torch.Tensor:
    """(B, 1, Lq, Lk) boolean mask of allowed (query, key) pairs."""
    q_pos, kv_pos = _positions(q, k, q_pos, kv_pos)
    if getattr(pattern, "per_row", False):  # a pattern that depends on the row (token trees)
        rows = torch.arange(q.shape[0], device=q.device)[:, None, None]
        mask = pattern.allowed(q_pos[:, :, None], kv_pos[:, None, :], row=rows)
    else:
        mask = pattern.allowed(q_pos[:, :, None], kv_pos[:, None, :])
    if kv_valid is not None:
        mask = mask & kv_valid[:, None, :].to(torch.bool)
    return mask[:, None]


def _is_plain(q, k, q_pos, kv_pos, kv_valid) -> bool:
    return q_pos is None and kv_pos is None and kv_valid is None


class _Backend:
    name = "?"

    def supports(self, device=None, dtype=None, pattern=None, **_) -> str | None:
        return None


def masked_scores(q, k, v, *, pattern: AttentionPattern = CAUSAL, q_pos=None, kv_pos=None, kv_valid=None, scale=None):
    """The reference's scaled scores (B, H, Lq, Lk) with disallowed keys at -inf, the (B, 1, Lq, Lk)
    mask, and ``v`` repeated over grouped heads, all in the work dtype (half precision upcast to
    float32, float32/float64 kept). Finish with :func:`attend`; a backend may edit the scores between."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    work = torch.promote_types(q.dtype, torch.float32)
    scores = torch.matmul(q.to(work), k.to(work).transpose(-1, -2)) * scale
    mask = dense_mask(pattern, q, k, q_pos, kv_pos, kv_valid)
    return scores.masked_fill(~mask, float("-inf")), mask, v.to(work)


def attend(scores, mask, v, dtype):
    """Softmax of ``scores`` over the keys times ``v``, in ``dtype``; a query with no allowed key
    (a row of ``mask`` all False) gives zeros."""
    empty = ~mask.any(-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    return torch.matmul(probs, v).to(dtype)


class Reference(_Backend):
    name = "reference"

    def __call__(self, q, k, v, *, pattern: AttentionPattern = CAUSAL, q_pos=None, kv_pos=None, kv_valid=None, scale=None):
        scores, mask, v = masked_scores(q, k, v, pattern=pattern, q_pos=q_pos, kv_pos=kv_pos, kv_valid=kv_valid, scale=scale)
        return attend(scores, mask, v, q.dtype)


class Sdpa(_Backend):
    name = "sdpa"

    def __call__(self, q, k, v, *, pattern: AttentionPattern = CAUSAL, q_pos=None, kv_pos=None, kv_valid=None, scale=None):
        gqa = q.shape[1] != k.shape[1]
        Lq, Lk = q.shape[2], k.shape[2]
        if _is_plain(q, k, q_pos, kv_pos, kv_valid) and type(pattern) is AttentionPattern:
            if pattern.kind == "full":
                return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
            if pattern.kind == "causal" and Lq == Lk:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        mask = dense_mask(pattern, q, k, q_pos, kv_pos, kv_valid)
        empty = ~mask.any(-1, keepdim=True)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | empty, scale=scale, enable_gqa=gqa)
        return out.masked_fill(empty, 0.0)  # unconditional: no host sync, and torch.compile traces it


class Flex(_Backend):
    name = "flex"

    def supports(self, device=None, dtype=None, pattern=None, requires_grad=False, **_):
        if requires_grad and device is not None and torch.device(device).type == "cpu":
            return "FlexAttention has no backward on CPU"
        try:
            from torch.nn.attention import flex_attention  # noqa: F401
        except Exception as exc:  # pragma: no cover - old torch
            return f"FlexAttention unavailable: {exc}"
        if device is not None and torch.device(device).type not in ("cpu", "cuda"):
            return f"FlexAttention does not run on {device}"
        return None

    def __call__(self, q, k, v, *, pattern: AttentionPattern = CAUSAL, q_pos=None, kv_pos=None, kv_valid=None, scale=None):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        B, Lq, Lk = q.shape[0], q.shape[2], k.shape[2]
        q_pos, kv_pos = _positions(q, k, q_pos, kv_pos)
        q_pos = q_pos.expand(B, Lq).contiguous()
        kv_pos = kv_pos.expand(B, Lk).contiguous()
        valid = kv_valid.to(torch.bool) if kv_valid is not None else torch.ones(B, Lk, dtype=torch.bool, device=q.device)

        per_row = getattr(pattern, "per_row", False)

        def mask_mod(b, h, q_idx, kv_idx):
            if per_row:
                return pattern.allowed(q_pos[b, q_idx], kv_pos[b, kv_idx], row=b) & valid[b, kv_idx]
            return pattern.allowed(q_pos[b, q_idx], kv_pos[b, kv_idx]) & valid[b, kv_idx]

        block_mask = create_block_mask(mask_mod, B, None, Lq, Lk, device=q.device)
        out = flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
        # rows with no allowed key: zeros, as in every backend
        empty = ~dense_mask(pattern, q, k, q_pos, kv_pos, valid).any(-1, keepdim=True)
        return out.masked_fill(empty, 0.0)  # unconditional: no host sync, and torch.compile traces it


class Xformers(_Backend):
    name = "xformers"

    def supports(self, device=None, dtype=None, pattern=None, **_):
        if device is None or torch.device(device).type != "cuda":
            return "xformers runs on CUDA only"
        try:
            import xformers.ops  # noqa: F401
        except Exception as exc:
            return f"xformers is not installed ({type(exc).__name__})"
        if dtype is not None and dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return f"dtype {dtype} unsupported"
        return None

    def __call__(self, q, k, v, *, pattern: AttentionPattern = CAUSAL, q_pos=None, kv_pos=None, kv_valid=None, scale=None):
        import xformers.ops as xops

        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # xformers wants (B, L, H, Dh)
        Lq, Lk = q.shape[2], k.shape[2]
        bias = None
        plain = _is_plain(q, k, q_pos, kv_pos, kv_valid) and type(pattern) is AttentionPattern
        empty = None
        if plain and pattern.kind == "full":
            bias = None
        elif plain and pattern.kind == "causal":
            bias = xops.LowerTriangularFromBottomRightMask() if Lq != Lk else xops.LowerTriangularMask()
        else:
            mask = dense_mask(pattern, q, k, q_pos, kv_pos, kv_valid)
            empty = ~mask.any(-1, keepdim=True)
            mask = mask | empty
            pad = (-Lk) % 8  # xformers wants the bias's last dim aligned to 8
            full = torch.zeros(q.shape[0], q.shape[1], Lq, Lk + pad, dtype=q.dtype, device=q.device)
            full[..., :Lk].masked_fill_(~mask, float("-inf"))
            bias = full[..., :Lk]
        out = xops.memory_efficient_attention(qt, kt, vt, attn_bias=bias, scale=scale).transpose(1, 2)
        if empty is not None:
            out = out.masked_fill(empty, 0.0)
        return out


def make_reference(config=None, ctx=None):
    return Reference()


def make_sdpa(config=None, ctx=None):
    return Sdpa()


def make_flex(config=None, ctx=None):
    return Flex()


def make_xformers(config=None, ctx=None):
    return Xformers()
