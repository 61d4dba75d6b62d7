"""FReTNA: re-translation of a streaming source with a non-autoregressive model (Han et al., 2020).

What the paper does. Simultaneous translation by *re-translation*: each time the source grows,
the whole source prefix is translated again and the new output replaces the old one (earlier
output may be revised, "flicker"). Re-translating with an autoregressive model costs a full
decode per update; FReTNA uses a non-autoregressive model instead, so each update is one
parallel pass whatever the output length, which makes re-translation fast enough to run on every
source update.

What this implementation does. Decoder ``fretna`` (``decoder.py``): on a model trained as a NAT
model (the ``nat-ctc`` head and objective), it plays each source as a stream revealed
``update_every`` tokens at a time; every update lays out the source prefix as a source block and
re-translates it with one pass of the NAT decoder it asks the registry for (``nat``, default
``nat-ctc``), replacing the previous translation (``retranslate.py``: ``Retranslator``, usable
directly on a live stream, and ``erasure``). Forward passes equal the number of source updates;
metrics report the updates, the erasure and every partial translation.

What it simplifies at toy scale. The NAT model is the ``nat-ctc`` plugin (the technique list
assumes a CTC-based model; we follow it), trained on full sources only: no training on source
prefixes, no output masking or stability heuristics of the paper, and the stream is simulated
from a complete source (``generate(source=...)``) or fed by hand through ``Retranslator.update``.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveInt

_P = "genloom.plugins.fretna"

PAPER = records.Paper(
    title="Faster Re-translation Using Non-Autoregressive Model For Simultaneous Neural Machine Translation",
    year=2020,
    arxiv="2012.14681",
)


@dataclass
class FretnaDecoderConfig:
    """Re-translate every source prefix with one non-autoregressive pass."""

    update_every: PositiveInt = 1
    """Source tokens revealed per update (each update costs one NAT pass)."""
    nat: dict | str = records.node_field("decoder", "nat-ctc")
    """The non-autoregressive decoder that translates one source prefix in one pass."""


@hookimpl
def genloom_decoders():
    return [records.decoder("fretna", f"{_P}.decoder:build", FretnaDecoderConfig, "Re-translation of a streaming source: one NAT pass per source update, each output replaced.", PAPER)]
