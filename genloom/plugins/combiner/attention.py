"""The ``combiner_attention`` op: Combiner-Fixed causal attention (Ren et al., 2021, eq. 5-8).

Signature shared by the backends::

    combiner_attention(q, k, v, w, *, region_size, q_pos=None, kv_pos=None, kv_valid=None, scale=None)

``q``, ``k``, ``v`` are (B, H, L, Dh) (queries and keys with the same number of heads), ``w``
(H, Dh) the per-head vector of the local expectation. Positions are cut into regions of
``region_size``; a query at position i in region r(i) attends

- *directly* to the keys of its own region up to itself: weight exp(s q_i.k_j) / Z_i,
- *indirectly* to every earlier region Omega_rho (rho < r(i)) through its abstraction: the region
  gets the weight exp(s q_i.k_Omega) / Z_i, with k_Omega the max-pool of the region's keys, and
  spreads it over its keys by the local expectation q(j | Omega) = softmax_{j in Omega}(w.k_j), so
  the region contributes v_Omega = sum_j q(j | Omega) v_j.

Z_i normalises the direct and the region terms together, so every query's weights over the keys
sum to one and are positive on every earlier position. With ``region_size = 1`` every region is
one key (k_Omega = k_j, q(j | Omega) = 1) and the op is exactly full causal attention.

Backends: ``reference`` builds the (Lq, Lk) weight matrix of that definition (O(L^2)), used by
:func:`weights`; ``regions`` computes the same output from the region summaries, reshaping a
plain sequence into regions so it scores L (S + R) entries (regions of S keys, R regions: O(L
sqrt L) with S ~ sqrt L), and falling back to masked scores for cached calls with positions.
"""

from __future__ import annotations

import math

import torch


def _defaults(q, k, q_pos, kv_pos, kv_valid):
    B, Lq, Lk = q.shape[0], q.shape[2], k.shape[2]
    if kv_pos is None:
        kv_pos = torch.arange(Lk, device=q.device).expand(B, Lk)
    if q_pos is None:
        q_pos = torch.arange(Lk - Lq, Lk, device=q.device).expand(B, Lq)
    if kv_valid is None:
        kv_valid = torch.ones(B, Lk, dtype=torch.bool, device=q.device)
    return q_pos, kv_pos, kv_valid.to(torch.bool)


def region_summaries(k, v, w, kv_region, kv_valid, n_regions: int):
    """(k_Omega (B, H, R, Dh) max-pooled keys, v_Omega (B, H, R, Dh), q(j | Omega) (B, H, R, Lk),
    nonempty (B, R)) for regions 0 .. n_regions - 1 of the valid keys."""
    member = (kv_region[:, None, :] == torch.arange(n_regions, device=k.device)[None, :, None]) & kv_valid[:, None, :]  # (B, R, Lk)
    pooled = k[:, :, None].masked_fill(~member[:, None, :, :, None], float("-inf")).amax(3)
    nonempty = member.any(-1)
    pooled = torch.where(nonempty[:, None, :, None], pooled, torch.zeros_like(pooled))
    local = torch.einsum("bhld,hd->bhl", k, w.to(k.dtype))[:, :, None, :].masked_fill(~member[:, None], float("-inf"))
    expectation = torch.nan_to_num(torch.softmax(local, -1), nan=0.0)  # an empty region spreads nothing
    return pooled, expectation @ v, expectation, nonempty


def _joint(direct, regional):
    """Softmax over the direct keys and the region abstractions together; an empty row gives zeros."""
    joint = torch.cat([direct, regional], -1)
    probs = torch.nan_to_num(torch.softmax(joint, -1), nan=0.0)
    return probs[..., : direct.shape[-1]], probs[..., direct.shape[-1]:]


def weights(q, k, w, *, region_size: int, q_pos=None, kv_pos=None, kv_valid=None, scale=None) -> torch.Tensor:
    """(B, H, Lq, Lk): the weight every query puts on every key (the definition)."""
    q_pos, kv_pos, kv_valid = _defaults(q, k, q_pos, kv_pos, kv_valid)
    work = torch.promote_types(q.dtype, torch.float32)
    q, k = q.to(work), k.to(work)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    q_region, kv_region = q_pos // region_size, kv_pos // region_size
    R = int(max(int(kv_region.max()), int(q_region.max()))) + 1 if kv_region.numel() else 1
    pooled, _, expectation, nonempty = region_summaries(k, k, w, kv_region, kv_valid, R)
    direct_mask = (q_region[:, :, None] == kv_region[:, None, :]) & (kv_pos[:, None, :] <= q_pos[:, :, None]) & kv_valid[:, None, :]
    region_mask = (torch.arange(R, device=q.device)[None, None, :] < q_region[:, :, None]) & nonempty[:, None, :]
    direct = (q @ k.transpose(-1, -2) * scale).masked_fill(~direct_mask[:, None], float("-inf"))
    regional = (q @ pooled.transpose(-1, -2) * scale).masked_fill(~region_mask[:, None], float("-inf"))
    p_direct, p_region = _joint(direct, regional)
    return p_direct + p_region @ expectation


class Reference:
    name = "reference"

    def supports(self, **_) -> str | None:
        return None

    def __call__(self, q, k, v, w, *, region_size: int, q_pos=None, kv_pos=None, kv_valid=None, scale=None):
        P = weights(q, k, w, region_size=region_size, q_pos=q_pos, kv_pos=kv_pos, kv_valid=kv_valid, scale=scale)
        return (P @ v.to(P.dtype)).to(q.dtype)


class Regions:
    """The output from the region summaries; plain sequences are reshaped into regions."""

    name = "regions"

    def supports(self, **_) -> str | None:
        return None

    def __call__(self, q, k, v, w, *, region_size: int, q_pos=None, kv_pos=None, kv_valid=None, scale=None):
        dtype, work = q.dtype, torch.promote_types(q.dtype, torch.float32)
        scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
        if q_pos is None and kv_pos is None and kv_valid is None and q.shape[2] == k.shape[2]:
            return self._reshaped(q.to(work), k.to(work), v.to(work), w, region_size, scale).to(dtype)
        q_pos, kv_pos, kv_valid = _defaults(q, k, q_pos, kv_pos, kv_valid)
        q, k, v = q.to(work), k.to(work), v.to(work)
        q_region, kv_region = q_pos // region_size, kv_pos // region_size
        R = int(max(int(kv_region.max()), int(q_region.max()))) + 1
        pooled, summary, _, nonempty = region_summaries(k, v, w, kv_region, kv_valid, R)
        direct_mask = (q_region[:, :, None] == kv_region[:, None, :]) & (kv_pos[:, None, :] <= q_pos[:, :, None]) & kv_valid[:, None, :]
        region_mask = (torch.arange(R, device=q.device)[None, None, :] < q_region[:, :, None]) & nonempty[:, None, :]
        direct = (q @ k.transpose(-1, -2) * scale).masked_fill(~direct_mask[:, None], float("-inf"))
        regional = (q @ pooled.transpose(-1, -2) * scale).masked_fill(~region_mask[:, None], float("-inf"))
        p_direct, p_region = _joint(direct, regional)
        return (p_direct @ v + p_region @ summary).to(dtype)

    @staticmethod
    def _reshaped(q, k, v, w, S, scale):
        B, H, L, D = q.shape
        R = -(-L // S)
        pad = R * S - L
        q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        qr, kr, vr = (t.view(B, H, R, S, D) for t in (q, k, v))
        # the last region's padded keys: never summarised for a real query (only earlier regions
        # are), and after every real query of the last region, so masked by causality
        pooled = kr.amax(3)  # (B, H, R, D)
        expectation = torch.softmax(torch.einsum("bhrsd,hd->bhrs", kr, w.to(kr.dtype)), -1)
        summary = torch.einsum("bhrs,bhrsd->bhrd", expectation, vr)
        causal = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()
        direct = (qr @ kr.transpose(-1, -2) * scale).masked_fill(~causal, float("-inf"))  # (B, H, R, S, S)
        earlier = torch.arange(R, device=q.device)[None, :] < torch.arange(R, device=q.device)[:, None]  # (R own, R other)
        regional = (torch.einsum("bhrsd,bhpd->bhrsp", qr, pooled) * scale).masked_fill(~earlier[:, None, :], float("-inf"))
        p_direct, p_region = _joint(direct, regional)
        out = p_direct @ vr + torch.einsum("bhrsp,bhpd->bhrsd", p_region, summary)
        return out.reshape(B, H, R * S, D)[:, :, :L]


def attention_entries(length: int, region_size: int) -> dict[str, int]:
    """Scores one causal pass computes: Combiner's direct (own region up to the query) plus region
    abstractions (earlier regions), against full causal attention's L (L + 1) / 2."""
    pos = torch.arange(length)
    region = pos // region_size
    direct = int(((region[:, None] == region[None, :]) & (pos[None, :] <= pos[:, None])).sum())
    abstractions = int(region.sum())  # query in region r scores r abstractions
    return {"combiner": direct + abstractions, "full_causal": length * (length + 1) // 2}


def make_reference(config=None, ctx=None):
    return Reference()


def make_regions(config=None, ctx=None):
    return Regions()
