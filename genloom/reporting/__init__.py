"""Offline HTML pages about runs: ``genloom report`` and ``genloom compare``.

Each command writes one self-contained HTML file (styles inline, images as ``data:`` URIs, no
script, no network) that a person can open from disk or attach to a message.

- :func:`report` (``genloom report RUN``): the run's resolved config, training and validation
  curves read from its own CSV or offline wandb logs, the plugins and versions that built it, its
  samples and its evaluation tables (:mod:`genloom.reporting.run_report`).
- :func:`compare` (``genloom compare RUN --decoders a,b,c``): every decoder, built through the
  registry, on the same prompts and seeds; outputs side by side, forward passes, tokens per
  target pass, acceptance rate per draft position, wall clock, and which decoders are exact
  (:mod:`genloom.reporting.comparison`).

Importing this package is cheap; matplotlib and torch are imported when a page is built.
"""

from __future__ import annotations

from genloom.reporting.page import ReportError

__all__ = ["ReportError", "compare", "report"]


def report(run, out=None, *, overwrite: bool = False, samples: bool = True):
    """Write the run report of the run directory ``run`` to ``out`` (default ``RUN/report.html``); returns its path.

    ``samples=False`` skips regenerating the text sample (no model is loaded). Raises
    :class:`ReportError` when the run does not exist, has no logs, or ``out`` cannot be written
    (an existing ``out`` is replaced only with ``overwrite=True``).
    """
    from genloom.reporting.run_report import report as _report

    return _report(run, out, overwrite=overwrite, samples=samples)


def compare(run, decoders, prompts=None, out=None, *, overwrite: bool = False, max_new_tokens: int | None = None, seed: int = 0,
            options: dict | None = None):
    """Run every decoder in ``decoders`` on the same prompts and seed and write the comparison page; returns its path.

    ``decoders`` are names (``"greedy"``, ``"plugin:name"``) or config nodes (``{"name": ..., <fields>}``);
    ``options`` maps a decoder name to extra config fields (``{"speculative": {"draft": "runs/small"}}``).
    ``prompts`` default to the config's ``generate.prompt``; ``max_new_tokens`` to its
    ``generate.max_new_tokens``. ``out`` defaults to ``RUN/compare.html``.
    """
    from genloom.reporting.comparison import compare as _compare

    return _compare(run, decoders, prompts, out, overwrite=overwrite, max_new_tokens=max_new_tokens, seed=seed, options=options)
