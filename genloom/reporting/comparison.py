"""``genloom compare RUN --decoders a,b,c [PROMPT ...]``: decoders side by side on one page.

Every decoder is built through the registry (any installed one, third-party included) against the
run's model, then runs every prompt with the same seed, the same ``max_new_tokens`` and the run's
logits processors. Before the timed calls each decoder makes one short untimed call, so the first
decoder does not pay for warming up torch. Per decoder the page shows the outputs, forward passes
per model (``GenerationMetrics.forward_passes``: target, draft...), tokens per target pass,
acceptance rate per draft position, mean acceptance length, wall clock and tokens/s, summed over
the prompts; and where the decoder declares itself exact (``Decoder.exact``), what its output
equals: the target's sampling law, or its greedy decoding token for token (checked against the
``greedy`` column when both are on the page).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from genloom.core.errors import GenloomError
from genloom.reporting import page
from genloom.reporting.page import Raw, ReportError, esc
from genloom.reporting.run_report import check_run

EXACT_NOTES = {
    "sampling": "exact: output law = the target's sampling law",
    "greedy": "exact: output = the target's greedy decoding",
}
EXACT_EXPLAINED = (
    "Exactness is what a decoder declares (Decoder.exact) and its plugin's tests prove: \"output law = the target's sampling "
    "law\" means its outputs are distributed exactly as ancestral sampling from the target model with the same processors "
    "(single samples differ, their distribution does not); \"output = the target's greedy decoding\" means token for token "
    "the same as greedy, which the page checks against the greedy column when both are present.")


@dataclass
class DecoderRun:
    """One decoder's outputs and metrics summed over the prompts."""

    label: str
    node: dict
    plugin: str = ""
    version: str = ""
    exact: str | None = None
    outputs: list[str] = field(default_factory=list)
    tokens: int = 0
    steps: int = 0
    forward_passes: dict[str, int] = field(default_factory=dict)
    position_proposed: list[int] = field(default_factory=list)
    position_accepted: list[int] = field(default_factory=list)
    acceptance_lengths: list[int] = field(default_factory=list)
    seconds: float = 0.0
    ids: list[list[int]] = field(default_factory=list)

    def add(self, metrics) -> None:
        self.tokens += metrics.tokens_generated
        self.steps += metrics.steps
        self.seconds += metrics.seconds
        for name, n in metrics.forward_passes.items():
            self.forward_passes[name] = self.forward_passes.get(name, 0) + n
        for i, (p, a) in enumerate(zip(metrics.position_proposed, metrics.position_accepted)):
            if i == len(self.position_proposed):
                self.position_proposed.append(0)
                self.position_accepted.append(0)
            self.position_proposed[i] += p
            self.position_accepted[i] += a
        self.acceptance_lengths += list(metrics.acceptance_lengths)

    @property
    def tokens_per_target_pass(self) -> float | None:
        calls = self.forward_passes.get("target", 0)
        return self.tokens / calls if calls else None

    @property
    def acceptance_rate_by_position(self) -> list[float]:
        return [a / p if p else 0.0 for a, p in zip(self.position_accepted, self.position_proposed)]

    @property
    def mean_acceptance_length(self) -> float | None:
        return sum(self.acceptance_lengths) / len(self.acceptance_lengths) if self.acceptance_lengths else None


def default_out(run_dir: Path) -> Path:
    return Path(run_dir) / "compare.html"


def parse_decoders(decoders) -> list:
    """``"a,b"`` or a list of names / nodes -> a list of names or nodes (no empty entries)."""
    if isinstance(decoders, str):
        decoders = decoders.split(",")
    items = [d.strip() if isinstance(d, str) else d for d in (decoders or [])]
    items = [d for d in items if d not in ("", None)]
    if not items:
        raise ReportError("--decoders names no decoder; give a comma list such as greedy,sampling,beam (see `genloom components decoder`)")
    return items


def parse_options(items: list[str]) -> dict[str, dict]:
    """``["speculative.gamma=4", ...]`` -> ``{"speculative": {"gamma": 4}}`` (values parsed as YAML)."""
    import yaml

    out: dict[str, dict] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        name, dot, fld = key.rpartition(".")
        if not eq or not dot or not name or not fld:
            raise ReportError(f"option '{item}' is not of the form DECODER.FIELD=VALUE (e.g. speculative.gamma=4)")
        out.setdefault(name, {})[fld] = yaml.safe_load(value)
    return out


def compare(run, decoders, prompts=None, out=None, *, overwrite: bool = False, max_new_tokens: int | None = None, seed: int = 0,
            options: dict | None = None) -> Path:
    """Run ``decoders`` on ``prompts`` with the run's model and write the comparison page (see the module docstring)."""
    run_dir = check_run(run)
    items = parse_decoders(decoders)
    out = page.check_out(out or default_out(run_dir), overwrite)
    import genloom

    gen = genloom.load(run_dir)
    if not _is_text(gen):
        raise ReportError(f"run '{run_dir}' is not a text model (modality '{gen.ctx.get('modality')}'); compare decodes text prompts")
    gcfg = gen.model.config.sections.get("generate") if gen.model.config is not None else None
    prompts = list(prompts) if prompts else [getattr(gcfg, "prompt", "") or ""]
    max_new = int(max_new_tokens if max_new_tokens is not None else getattr(gcfg, "max_new_tokens", 64))
    if max_new < 1:
        raise ReportError(f"max_new_tokens must be at least 1, got {max_new}")
    built = [_build(gen, item, options or {}) for item in items]  # every decoder builds before anything runs
    encoded = [list(gen.encode(p)) if p else [int(gen.ctx.get("eos_id") or 0)] for p in prompts]
    for run_, decoder in built:
        _warm_up(gen, decoder, encoded[0], seed, run_.label)
        for ids in encoded:
            try:
                result = gen.generate([ids], max_new_tokens=max_new, decoder=decoder, seed=seed)
            except GenloomError:
                raise
            except Exception as exc:
                raise ReportError(f"decoder '{run_.label}' failed while generating: {type(exc).__name__}: {exc}") from exc
            run_.add(result.metrics)
            run_.ids.append(list(result.ids[0]))
            run_.outputs.append(result.text()[0])
    runs = [r for r, _ in built]
    html = build(run_dir, gen, runs, prompts, max_new, seed)
    return page.write_page(out, html, overwrite=overwrite)


def _is_text(gen) -> bool:
    return gen.ctx.get("modality", "text") == "text" and hasattr(gen.tokenizer, "decode") and not hasattr(gen.tokenizer, "generate_samples")


def _build(gen, item, options: dict):
    """Build one decoder; any failure becomes a ReportError naming it."""
    node = {"name": item} if isinstance(item, str) else dict(item)
    name = str(node.get("name", ""))
    spec = gen.model.decoder_spec
    if spec is not None and name in (spec.record.name, spec.record.qualified_name) and isinstance(item, str):
        # the run's own decoder keeps the fields its config gave it (a draft model, say)
        node = {**{f.name: getattr(spec.config, f.name) for f in dataclasses.fields(spec.config)}, "name": name}
    node.update(options.get(name, {}))
    label = name if isinstance(item, str) else item.get("label", name)
    node.pop("label", None)
    try:
        decoder = gen.decoder(node)
        record = gen.ctx.registry.get("decoder", name, path="decoder")
    except GenloomError as exc:
        raise ReportError(f"decoder '{name}' cannot be built: {exc}") from exc
    except Exception as exc:
        raise ReportError(f"decoder '{name}' failed to build: {type(exc).__name__}: {exc}") from exc
    run = DecoderRun(label=label, node=node, plugin=record.plugin, version=f"{record.distribution} {record.version}",
                     exact=getattr(decoder, "exact", None))
    return run, decoder


def _warm_up(gen, decoder, ids, seed, label) -> None:
    try:
        gen.generate([ids], max_new_tokens=2, decoder=decoder, seed=seed)
    except GenloomError:
        raise
    except Exception as exc:
        raise ReportError(f"decoder '{label}' failed while generating: {type(exc).__name__}: {exc}") from exc


# -- the page ---------------------------------------------------------------------------------
def build(run_dir: Path, gen, runs: list[DecoderRun], prompts: list[str], max_new: int, seed: int) -> str:
    config = gen.model.config.to_container() if gen.model.config is not None and hasattr(gen.model.config, "to_container") else {}
    procs = ", ".join(f"{p.get('name')}(" + ", ".join(f"{k}={v}" for k, v in p.items() if k != "name") + ")" for p in config.get("processors") or [] if isinstance(p, dict)) or "none"
    sections = [
        ("summary", "Metrics", _summary(runs, procs, prompts, max_new, seed)),
        ("outputs", "Outputs side by side", _outputs(runs, prompts)),
        ("acceptance", "Acceptance and speed", _plots(runs)),
        ("decoders", "Decoder configs", _configs(runs)),
    ]
    subtitle = f"{run_dir.resolve()} · {len(runs)} decoders · {len(prompts)} prompt(s) · seed {seed} · {max_new} new tokens · page written {time.strftime('%Y-%m-%d %H:%M')}"
    return page.document(f"genloom decoder comparison: {run_dir.name}", subtitle, sections)


def _greedy_reference(runs: list[DecoderRun]) -> DecoderRun | None:
    return next((r for r in runs if r.node.get("name") in ("greedy", "baseline:greedy")), None)


def _exact_cell(run: DecoderRun, reference: DecoderRun | None) -> Raw:
    if run.exact not in EXACT_NOTES:
        return Raw('<span class="note">no claim</span>')
    text = esc(EXACT_NOTES[run.exact])
    if run.exact == "greedy" and reference is not None and reference is not run:
        same = run.ids == reference.ids
        text += f"; {'same tokens as greedy here' if same else '<b>differs from greedy here</b>'}"
    return Raw(f'<span class="exact">{text}</span>')


def _summary(runs, procs, prompts, max_new, seed) -> str:
    models = sorted({m for r in runs for m in r.forward_passes}, key=lambda m: (m != "target", m))
    drafting = any(r.acceptance_lengths for r in runs)
    header = (["decoder", "plugin"] + [f"{m} passes" for m in models] + ["tokens", "tokens / target pass"] + (["mean accepted"] if drafting else [])
              + ["wall clock s", "tokens / s", "exactness"])
    reference = _greedy_reference(runs)
    rows = []
    for r in runs:
        rows.append([r.label, f"{r.plugin} ({r.version})"] + [r.forward_passes.get(m, 0) for m in models]
                    + [r.tokens, r.tokens_per_target_pass] + ([r.mean_acceptance_length] if drafting else [])
                    + [round(r.seconds, 3), r.tokens / r.seconds if r.seconds else None, _exact_cell(r, reference)])
    numeric = set(range(2, len(header) - 1))
    note = (f'<p class="note">Summed over {len(prompts)} prompt(s), one sequence each, seed {seed}, up to {max_new} new tokens, '
            f'the run\'s processors ({esc(procs)}). A forward pass is one call of a model (the prompt\'s prefill counts as one); '
            f'"mean accepted" is the mean number of draft tokens accepted per verification, for decoders that draft. {esc(EXACT_EXPLAINED)}</p>')
    return page.table(header, rows, numeric=numeric, cls="metrics") + note


def _outputs(runs, prompts) -> str:
    cols = len(runs)
    parts = []
    for i, prompt in enumerate(prompts):
        cells = "".join(f'<div><h3>{esc(r.label)}</h3><pre><span class="prompt">{esc(prompt)}</span>{esc(r.outputs[i])}</pre></div>' for r in runs)
        parts.append(f'<h3>Prompt {i + 1}: <code>{esc(prompt) or "(empty)"}</code></h3>'
                     f'<div class="grid" style="grid-template-columns: repeat({cols}, minmax(0, 1fr))">{cells}</div>')
    return "".join(parts) + '<p class="note">The prompt is grey; the rest is what the decoder generated.</p>'


def _plots(runs) -> str:
    plt = page.pyplot()
    figures = []
    drafting = [r for r in runs if r.position_proposed]
    if drafting:
        fig, ax = plt.subplots(figsize=(5.6, 3.3))
        for r in drafting:
            rates = r.acceptance_rate_by_position
            ax.plot(range(1, len(rates) + 1), rates, marker="o", linewidth=1.6, label=r.label)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("draft position")
        ax.set_ylabel("acceptance rate")
        ax.set_title("Acceptance rate per draft position")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
        fig.tight_layout()
        figures.append(page.image(page.figure_svg(fig), "image/svg+xml", alt="acceptance rate per draft position", width=560))
    labels = [r.label for r in runs]
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.3))
    axes[0].bar(labels, [r.tokens_per_target_pass or 0 for r in runs], color="#2f6fdf")
    axes[0].set_title("Tokens per target pass")
    axes[1].bar(labels, [r.seconds for r in runs], color="#e07b39")
    axes[1].set_title("Wall clock (s)")
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="x", labelrotation=20 if len(labels) > 3 else 0)
    fig.tight_layout()
    figures.append(page.image(page.figure_svg(fig), "image/svg+xml", alt="tokens per target pass and wall clock", width=840))
    note = "" if drafting else '<p class="note">No decoder here drafts tokens, so there is no acceptance rate to plot (speculative, SpecTr, blockwise-parallel and MTP decoders draft).</p>'
    return f'<div class="figures">{"".join(figures)}</div>{note}'


def _configs(runs) -> str:
    rows = [[r.label, ", ".join(f"{k}={v}" for k, v in r.node.items() if k != "name") or "(defaults)"] for r in runs]
    return page.table(["decoder", "config fields"], rows)
