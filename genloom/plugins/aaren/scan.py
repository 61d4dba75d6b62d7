"""The ``softmax_prefix_scan`` op: softmax attention of one query over every prefix.

``backend(scores (B, H, L), values (B, H, L, V), initial=None) -> (outputs (B, H, L, V), final)``
with ``outputs[t] = sum_{i <= t} softmax(scores[:t+1])_i values[i]`` (including the tokens of
``initial``) and triples ``(m (B, H), u (B, H), w (B, H, V))``: the running maximum, the
denominator ``sum exp(s - m)`` and the numerator ``sum exp(s - m) v``. A score of -inf is the
identity (a padded step). ``m = -inf, u = 0, w = 0`` is the empty triple.
"""

from __future__ import annotations

import torch


def empty_triple(batch: int, heads: int, width: int, *, device=None, dtype=torch.float32):
    return (torch.full((batch, heads), float("-inf"), device=device, dtype=dtype), torch.zeros(batch, heads, device=device, dtype=dtype), torch.zeros(batch, heads, width, device=device, dtype=dtype))


def _rescale(m_old, m_new):
    """exp(m_old - m_new), with 0 where m_old = -inf (an empty side contributes nothing)."""
    finite = torch.isfinite(m_old)
    return torch.where(finite, torch.exp(torch.where(finite, m_old - m_new, torch.zeros_like(m_old))), torch.zeros_like(m_old))


def combine(a, b):
    """The associative operator: triple a (earlier tokens) then triple b (later tokens)."""
    m = torch.maximum(a[0], b[0])
    fa, fb = _rescale(a[0], m), _rescale(b[0], m)
    return m, a[1] * fa + b[1] * fb, a[2] * fa[..., None] + b[2] * fb[..., None]


def _output(triple):
    u = triple[1]
    return torch.where(u[..., None] > 0, triple[2] / torch.where(u > 0, u, torch.ones_like(u))[..., None], torch.zeros_like(triple[2]))


def prefix_attention_recurrent(scores, values, initial=None):
    """Aaren's RNN update, one token at a time."""
    B, H, L = scores.shape
    state = initial if initial is not None else empty_triple(B, H, values.shape[-1], device=values.device, dtype=values.dtype)
    outputs = []
    for t in range(L):
        token = (scores[:, :, t], torch.isfinite(scores[:, :, t]).to(values.dtype), values[:, :, t] * torch.isfinite(scores[:, :, t])[..., None])
        state = combine(state, token)
        outputs.append(_output(state))
    return (torch.stack(outputs, 2) if outputs else values.new_zeros(B, H, 0, values.shape[-1])), state


def prefix_attention_scan(scores, values, initial=None):
    """All prefixes at once by a Hillis-Steele scan (ceil(log2 L) rounds of ``combine``)."""
    B, H, L = scores.shape
    present = torch.isfinite(scores)
    m, u, w = scores, present.to(values.dtype), values * present[..., None]
    if initial is not None and L:
        first = combine(initial, (m[:, :, 0], u[:, :, 0], w[:, :, 0]))
        m, u, w = (torch.cat([f[:, :, None], t[:, :, 1:]], 2) for f, t in zip(first, (m, u, w)))
    offset = 1
    while offset < L:
        prev = (
            torch.nn.functional.pad(m[:, :, :-offset], (offset, 0), value=float("-inf")),
            torch.nn.functional.pad(u[:, :, :-offset], (offset, 0)),
            torch.nn.functional.pad(w[:, :, :-offset], (0, 0, offset, 0)),
        )
        m, u, w = combine(prev, (m, u, w))
        offset *= 2
    outputs = _output((m, u, w))
    if L == 0:
        final = initial if initial is not None else empty_triple(B, H, values.shape[-1], device=values.device, dtype=values.dtype)
    else:
        final = (m[:, :, -1], u[:, :, -1], w[:, :, -1])
    return outputs, final


class PrefixScanBackend:
    def __init__(self, name, function):
        self.name, self.function = name, function

    def supports(self, device=None, dtype=None, **kw):
        return None if dtype is None or dtype.is_floating_point else f"softmax_prefix_scan needs a floating-point dtype, got {dtype}"

    def __call__(self, scores, values, initial=None):
        return self.function(scores, values, initial)

    def __repr__(self):
        return f"softmax_prefix_scan[{self.name}]"


def make_reference(config=None, ctx=None):
    return PrefixScanBackend("reference", prefix_attention_recurrent)


def make_scan(config=None, ctx=None):
    return PrefixScanBackend("scan", prefix_attention_scan)
