"""The Hidden Attention of Mamba Models (Ali, Zimerman and Wolf, 2024).

What the paper does. Unrolling Mamba's selective scan (S6) from a zero state,
``h_i = sum_{j<=i} (prod_{k=j+1..i} Abar_k) Bbar_j x_j``, so every channel's output is a linear map
of its inputs, ``y_i = sum_j alpha[i, j] x_j`` with the *hidden attention matrix*

    alpha[i, j] = C_i (prod_{k=j+1..i} Abar_k) Bbar_j          (j <= i; 0 above the diagonal)

``Abar_k = exp(Delta_k A)``, ``Bbar_j = Delta_j B_j``. Mamba is thus a data-controlled, causal
attention with one attention matrix per channel (D of them per layer, versus a few heads in a
Transformer). The paper materialises alpha to compare it with self-attention and to read
explainability maps (attention rollout, attribution) off Mamba models.

What this implementation does. :mod:`.hidden_attention` adds a backend ``hidden-attention`` to
the ``selective_scan`` kernel op: it materialises alpha (B, D, L, L) from the scan's own inputs
(with the masked-exponent trick: log-decay differences formed only below the diagonal, cumulated
in double precision), computes ``y = alpha x`` (+ the initial state's term, the D skip and the
gate) and the final state, so any Mamba model runs on it unchanged and is tested against the
reference scan. :func:`.hidden_attention.record_hidden_attention` collects every alpha the backend
computes during a forward pass; :func:`.hidden_attention.attribution_maps` runs a model under the
backend and returns per-layer maps (alpha averaged over channels, the paper's per-layer view) and
their rollout across layers. It asks the registry only for the ``selective_scan`` op: it never
imports the ``mamba`` plugin.

What it simplifies. O(L^2 D N) memory: an analysis and verification tool for short sequences,
never picked by the dispatcher (priority -10; pin it with ``kernels: {selective_scan:
hidden-attention}``). Maps average |alpha| over channels with row normalisation; the paper's
class-conditional attribution variants (with gradients) are not reproduced.
"""

from __future__ import annotations

from genloom.core import hookimpl, records

PAPER = records.Paper(title="The Hidden Attention of Mamba Models", year=2024, arxiv="2403.01590")


@hookimpl
def genloom_kernels():
    return [
        records.kernel(
            "selective_scan",
            "hidden-attention",
            "genloom.plugins.mamba_hidden_attention.hidden_attention:make_backend",
            summary="Selective scan as its materialised hidden attention y = alpha x (O(L^2); analysis, pin to use).",
            paper=PAPER,
            priority=-10,
        )
    ]
