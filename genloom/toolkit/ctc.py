"""Connectionist temporal classification (CTC): the loss and collapse decoding.

A CTC output is a length-L sequence of distributions over the vocabulary plus a ``blank`` id. An
alignment is a length-L path of ids; collapsing it (merge runs of equal ids, then drop blanks)
gives a target. The CTC likelihood of a target y is the sum over every alignment that collapses to
y of the product of per-position probabilities (Graves et al., 2006):

    p(y | x) = sum_{a : collapse(a) = y} prod_t p(a_t | x)

:func:`ctc_loss` computes -log p(y | x) with torch's ``ctc_loss`` (the forward-backward recursion);
:func:`ctc_nll_by_enumeration` is the definition, a log-sum over all V^L alignments, for tests on
tiny vocabularies. :func:`collapse` and :func:`greedy_decode` turn alignments into targets (the
best path: argmax per position, then collapse).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def ctc_loss(log_probs: torch.Tensor, targets: torch.Tensor, input_lengths, target_lengths, *, blank: int, reduction: str = "none") -> torch.Tensor:
    """-log p(target | inputs) per sequence under CTC.

    ``log_probs`` (B, L, V) log-softmax outputs (batch first); ``targets`` (B, T) padded target ids
    (never ``blank``); ``input_lengths``/``target_lengths`` (B,) the valid lengths. ``reduction``:
    ``"none"`` gives (B,) negative log-likelihoods (``inf`` where no alignment fits: a target longer
    than its input, counting the blanks repeated ids need), ``"sum"`` their sum, ``"mean"`` their
    mean divided by target length (torch's convention).
    """
    B, L, _ = log_probs.shape
    input_lengths = torch.as_tensor(input_lengths, dtype=torch.long, device=log_probs.device).expand(B)
    target_lengths = torch.as_tensor(target_lengths, dtype=torch.long, device=log_probs.device).expand(B)
    return F.ctc_loss(log_probs.transpose(0, 1), targets, input_lengths, target_lengths, blank=blank, reduction=reduction, zero_infinity=False)


def collapse(path, blank: int) -> list[int]:
    """The target an alignment stands for: merge runs of equal ids, then drop blanks."""
    out, previous = [], None
    for t in (path.tolist() if hasattr(path, "tolist") else path):
        if t != previous and t != blank:
            out.append(int(t))
        previous = t
    return out


def greedy_decode(logits: torch.Tensor, blank: int, lengths=None) -> list[list[int]]:
    """Best-path decoding: the argmax alignment of each row of (B, L, V) ``logits``, collapsed."""
    best = logits.argmax(-1)
    lengths = [best.shape[1]] * best.shape[0] if lengths is None else [int(n) for n in lengths]
    return [collapse(best[b, : lengths[b]], blank) for b in range(best.shape[0])]


def ctc_nll_by_enumeration(log_probs: torch.Tensor, target, blank: int) -> torch.Tensor:
    """The definition: -log sum over all V^L alignments of ``log_probs`` (L, V) that collapse to ``target``.

    Exponential in L: for tests on tiny vocabularies and lengths only.
    """
    L, V = log_probs.shape
    target = [int(t) for t in target]
    terms = [log_probs[torch.arange(L), torch.tensor(path)].sum() for path in itertools.product(range(V), repeat=L) if collapse(path, blank) == target]
    if not terms:
        return torch.tensor(float("inf"), dtype=log_probs.dtype)
    return -torch.logsumexp(torch.stack(terms), 0)


def upsampled_length(source_length: int, ratio: float) -> int:
    """Output positions of a decoder that upsamples a source of ``source_length`` by ``ratio`` (at least 1)."""
    return max(1, int(round(source_length * ratio)))
