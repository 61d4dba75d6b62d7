"""``genloom report RUN``: one offline HTML page about a trained run.

What the page shows, and where each part comes from:

- headline figures and the evaluation tables: ``metrics.json`` (the final validation over the
  whole split) and the last value of every logged curve;
- training and validation curves (loss, bits per byte, the objective's own metrics, learning
  rate, tokens/s): the run's CSV or offline wandb logs (:mod:`genloom.reporting.logs`);
- samples: image files the run directory holds (``samples.png``...), and, for text models, a
  sample regenerated from the exported weights with the config's ``generate`` section (prompt,
  length, seed), decoder and processors: the same call, with the same seed, that printed the
  sample at the end of training;
- the resolved config tree (``config.yaml``) and the plugins, distributions and versions that
  built every component (``plugins.json``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from genloom.core.errors import GenloomError
from genloom.reporting import page
from genloom.reporting.logs import RunLogs, read_logs
from genloom.reporting.page import ReportError, esc

#: Curves plotted together: (title, y label, [(metric, legend)]).
PANELS = [
    ("Loss", "nats per token", [("train/loss", "train"), ("val/loss", "validation")]),
    ("Bits per byte", "bits per byte", [("train/bits_per_byte", "train"), ("val/bits_per_byte", "validation")]),
    ("Learning rate", "learning rate", [("train/lr", "lr")]),
    ("Throughput", "tokens / s", [("tok/s", "training tokens/s")]),
]
#: Figures that follow from the loss (shown in the tables, not plotted again).
DERIVED = {"ppl", "bits_per_token"}
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml", ".gif": "image/gif"}


def default_out(run_dir: Path) -> Path:
    return Path(run_dir) / "report.html"


def check_run(run) -> Path:
    run_dir = Path(run)
    if not run_dir.exists():
        raise ReportError(f"run directory '{run_dir}' does not exist (train one with `genloom train CONFIG`, which writes runs/<config name>)")
    if not run_dir.is_dir():
        raise ReportError(f"'{run_dir}' is not a directory; give the run directory that `genloom train` wrote (it holds config.yaml)")
    if not (run_dir / "config.yaml").exists():
        raise ReportError(f"'{run_dir}' is not a genloom run directory: {run_dir / 'config.yaml'} is missing")
    return run_dir


def report(run, out=None, *, overwrite: bool = False, samples: bool = True) -> Path:
    """Write the run report of ``run`` (a run directory) to ``out`` (default ``RUN/report.html``)."""
    run_dir = check_run(run)
    out = page.check_out(out or default_out(run_dir), overwrite)
    logs = read_logs(run_dir)
    if not logs.curves:
        raise ReportError(
            f"run '{run_dir}' has no training logs: neither logs/*/metrics.csv (logger: csv) nor "
            f"wandb/*/run-*.wandb (logger: wandb) is there{' (it was trained with logger: none)' if _logger(run_dir) == 'none' else ''}. "
            f"Train with logger=csv or logger=wandb to get curves.")
    html = build(run_dir, logs, samples=samples)
    return page.write_page(out, html, overwrite=overwrite)


def _logger(run_dir: Path):
    return _config(run_dir).get("logger")


def _config(run_dir: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text())
    except Exception as exc:
        raise ReportError(f"cannot read {run_dir / 'config.yaml'}: {exc}") from None
    return data if isinstance(data, dict) else {}


def build(run_dir: Path, logs: RunLogs, *, samples: bool = True) -> str:
    config = _config(run_dir)
    manifest = {}
    if (run_dir / "plugins.json").exists():
        try:
            manifest = json.loads((run_dir / "plugins.json").read_text())
        except json.JSONDecodeError:
            manifest = {}
    sections = [
        ("summary", "Summary", _summary(run_dir, config, logs)),
        ("curves", "Training curves", _curves(logs)),
        ("evaluation", "Evaluation", _evaluation(logs)),
        ("samples", "Samples", _samples(run_dir, config) if samples else '<p class="note">Samples were not generated (--no-samples).</p>'),
        ("config", "Config", page.tree(config, title="The resolved config (config.yaml), as training used it.")),
        ("plugins", "Plugins", _plugins(manifest)),
        ("files", "Files", _files(run_dir, logs)),
    ]
    names = ", ".join(str(config.get(k, {}).get("name", "?")) for k in ("tokenizer", "backbone", "objective") if isinstance(config.get(k), dict))
    subtitle = f"{run_dir.resolve()} · {names} · report written {time.strftime('%Y-%m-%d %H:%M')}"
    return page.document(f"genloom run report: {run_dir.name}", subtitle, sections)


# -- sections ---------------------------------------------------------------------------------
def _summary(run_dir: Path, config: dict, logs: RunLogs) -> str:
    s = logs.summary
    val = s.get("val", {}) or {}
    cards = []

    def card(value, label):
        cards.append(f'<div class="card"><b>{esc(value)}</b><span>{esc(label)}</span></div>')

    steps = s.get("global_step") or max((p[-1][0] + 1 for p in logs.curves.values() if p), default=None)
    card(page.fmt(steps), "optimizer steps")
    if s.get("parameters"):
        card(f"{s['parameters'] / 1e6:.2f} M", "parameters")
    if s.get("fit_seconds") is not None:
        card(_duration(s["fit_seconds"]), "training time")
    for key, label in (("bits_per_byte", "val bits per byte"), ("loss", "val loss (nats/token)"), ("mse", "val MSE"), ("mae", "val MAE")):
        if key == "loss" and "mse" in val:
            continue  # a forecaster's loss is its MSE
            card(page.fmt(float(val[key])), label)
    if "tok/s" in logs.curves:
        card(page.fmt(float(logs.curves["tok/s"][-1][1]), 3), "training tokens/s (last)")
    data = config.get("data", {}) if isinstance(config.get("data"), dict) else {}
    note = f'<p class="note">Data: {esc(data.get("name", "?"))}; logs read from {esc(", ".join(str(p.relative_to(run_dir)) for p in logs.sources))}.</p>'
    return f'<div class="cards">{"".join(cards)}</div>{note}'


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _panels(logs: RunLogs) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """The fixed panels that have data, then one panel per other metric the objective logged."""
    panels = [(t, y, [(m, lab) for m, lab in series if m in logs.curves]) for t, y, series in PANELS]
    panels = [p for p in panels if p[2]]
    shown = {m for _, _, series in panels for m, _ in series}
    others: dict[str, list[tuple[str, str]]] = {}
    for name in sorted(logs.curves):
        if name in shown:
            continue
        split, _, base = name.partition("/")
        if not base or split not in ("train", "val") or base in DERIVED or base.startswith("total_"):
            continue
        others.setdefault(base, []).append((name, "train" if split == "train" else "validation"))
    # a metric that repeats the loss (a forecaster's mse) is not plotted twice
    same = lambda series: all(logs.curves[m] == logs.curves.get(m.rpartition("/")[0] + "/loss") for m, _ in series)
    panels += [(base.replace("_", " "), base, series) for base, series in others.items() if not same(series)]
    return panels


def _curves(logs: RunLogs) -> str:
    plt = page.pyplot()
    figures = []
    for title, ylabel, series in _panels(logs):
        fig, ax = plt.subplots(figsize=(5.6, 3.3))
        for metric, label in series:
            steps, values = zip(*logs.curves[metric])
            few = len(steps) < 30
            ax.plot(steps, values, marker="o" if few else None, markersize=4, linewidth=1.6, label=label)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if title == "Learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        if len(series) > 1:
            ax.legend(frameon=False)
        fig.tight_layout()
        figures.append(page.image(page.figure_svg(fig), "image/svg+xml", alt=f"{title} curve", width=560))
    if not figures:
        return '<p class="note">The logs hold no train/ or val/ curves.</p>'
    return f'<div class="figures curves">{"".join(figures)}</div>'


def _evaluation(logs: RunLogs) -> str:
    parts = []
    val = (logs.summary or {}).get("val") or {}
    if val:
        rows = [[f"val/{k}", float(v)] for k, v in sorted(val.items()) if isinstance(v, (int, float))]
        parts.append("<h3>Final validation (whole split, metrics.json)</h3>" + page.table(["metric", "value"], rows, numeric={1}, cls="eval"))
    test = {k: v for k, v in (logs.summary or {}).items() if k.startswith("test") and isinstance(v, dict)}
    for key, values in test.items():
        rows = [[f"{key}/{k}", float(v)] for k, v in sorted(values.items()) if isinstance(v, (int, float))]
        parts.append(f"<h3>{esc(key)}</h3>" + page.table(["metric", "value"], rows, numeric={1}, cls="eval"))
    rows = []
    for name in sorted(logs.curves):
        points = logs.curves[name]
        values = [v for _, v in points]
        rows.append([name, len(points), points[-1][0], points[-1][1], min(values), max(values)])
    parts.append("<h3>Every logged metric</h3>" + page.table(["metric", "points", "last step", "last", "min", "max"], rows, numeric={1, 2, 3, 4, 5}, cls="eval"))
    return "".join(parts)


def _samples(run_dir: Path, config: dict) -> str:
    parts = []
    files = sorted(p for p in list(run_dir.glob("*")) + list(run_dir.glob("samples/*")) if p.suffix.lower() in IMAGE_TYPES and p.is_file())
    for path in files:
        parts.append(page.image(path.read_bytes(), IMAGE_TYPES[path.suffix.lower()], caption=str(path.relative_to(run_dir))))
    if (run_dir / "model.safetensors").exists():
        import genloom

        gen = genloom.load(run_dir)
        makers = (_text_sample, _forecast) + (() if files else (_image_samples,))
        for make in makers:
            try:
                part = make(gen, run_dir, config)
            except GenloomError:
                raise
            except Exception as exc:  # a sample is an extra: the page says why it is missing instead of failing
                what = {_text_sample: "text sample", _forecast: "forecast plot", _image_samples: "image samples"}[make]
                part = f'<p class="note">No {what}: {esc(type(exc).__name__)}: {esc(exc)}</p>'
            parts.append(part)
    else:
        parts.append('<p class="note">No exported weights (model.safetensors), so no sample was generated.</p>')
    if not any(parts):
        return '<p class="note">The run directory holds no sample images, and the model is not a text model whose sample could be regenerated.</p>'
    return "".join(parts)


def _text_sample(gen, run_dir: Path, config: dict) -> str:
    tok = gen.tokenizer
    if gen.ctx.get("modality", "text") != "text" or not hasattr(tok, "decode") or hasattr(tok, "generate_samples") or getattr(tok, "series", False):
        return ""
    gcfg = gen.model.config.sections.get("generate") if gen.model.config is not None else None
    prompt = getattr(gcfg, "prompt", "") or ""
    max_new = int(getattr(gcfg, "max_new_tokens", 100))
    n = max(1, int(getattr(gcfg, "num_samples", 1)))
    configured = getattr(gcfg, "seed", None)
    seed = 0 if configured is None else int(configured)  # a config without a seed draws a fresh one; the page stays reproducible
    ids = list(gen.encode(prompt)) if prompt else [int(gen.ctx.get("eos_id") or 0)]
    result = gen.generate([ids] * n, max_new_tokens=max_new, seed=seed)
    texts = result.decode()
    if not all(isinstance(t, str) for t in texts):
        return ""
    decoder = (config.get("decoder") or {}).get("name", "sampling") if isinstance(config.get("decoder"), dict) else "sampling"
    procs = ", ".join(str(p.get("name")) for p in config.get("processors") or [] if isinstance(p, dict)) or "none"
    blocks = "".join(f'<pre><span class="prompt">{esc(prompt)}</span>{esc(t)}</pre>' for t in texts)
    seed_note = f"seed {seed}" if configured is not None else "seed 0 (the config's generate.seed is unset: training drew a fresh one)"
    return (f"<h3>Text</h3><p class=\"note\">Decoder {esc(decoder)}, processors {esc(procs)}, {max_new} new tokens, {seed_note} "
            f"(the config's generate section; the prompt is grey).</p>{blocks}")


def _image_samples(gen, run_dir: Path, config: dict) -> str:
    """For a tokenizer that writes its own samples (an image grid), the file it writes for ``genloom generate``."""
    if not hasattr(gen.tokenizer, "generate_samples"):
        return ""
    import tempfile

    gcfg = gen.model.config.sections.get("generate") if gen.model.config is not None else None
    n, seed = max(1, int(getattr(gcfg, "num_samples", 1))), int(getattr(gcfg, "seed", None) or 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(gen.tokenizer.generate_samples(gen, n=n, seed=seed, out=Path(tmp) / "samples.png"))
        mime = IMAGE_TYPES.get(path.suffix.lower())
        if mime is None:
            return ""
        data = path.read_bytes()
    return (f'<h3>Generated samples</h3>{page.image(data, mime, caption=f"what genloom generate writes for this run (generate.num_samples={n}, seed {seed})")}')


#: Coverage of the forecast interval (split-conformal, from the validation residuals).
COVERAGE = 0.9


def _forecast(gen, run_dir: Path, config: dict) -> str:
    """Forecast plots with intervals for a forecaster (an objective with ``predict(model, x)`` on series windows).

    The interval at each horizon step and variate is the point forecast +- the 90 % quantile of the
    absolute validation errors there (split conformal); the page reports how many test targets it
    covers, and the test MSE/MAE on the data set's normalised scale.
    """
    objective = getattr(gen.model, "objective", None)
    if not hasattr(objective, "predict") or not getattr(gen.tokenizer, "series", False):
        return ""
    import numpy as np
    import torch

    from genloom.core import runio
    from genloom.core.model import build_component

    validated = runio.validate_run_config(run_dir)
    source = build_component(validated.components["data"], gen.ctx)
    if not hasattr(source, "load"):
        return ""
    with torch.inference_mode():
        def windows(split):
            ds = source.load(split)
            x, y = ds.tensors()
            return x, y, objective.predict(gen.model, x).float()

        vx, vy, vp = windows("val")
        tx, ty, tp = windows("test")
    width = torch.quantile((vp - vy).abs(), COVERAGE, dim=0)  # (horizon, V)
    inside = ((tp - ty).abs() <= width).float().mean().item()
    mse, mae = float(((tp - ty) ** 2).mean()), float((tp - ty).abs().mean())
    names = list(getattr(source, "info", {}).get("variates", [])) or [f"variate {i}" for i in range(ty.shape[-1])]
    plt = page.pyplot()
    shown = list(range(min(4, ty.shape[-1])))
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 2.9), squeeze=False)
    w = ty.shape[0] - 1  # the last test window
    L, H = tx.shape[1], ty.shape[1]
    for ax, v in zip(axes[0], shown):
        past = np.arange(-L, 0)
        future = np.arange(0, H)
        ax.plot(past, tx[w, :, v].numpy(), color="#5b6475", linewidth=1.4, label="lookback")
        ax.plot(future, ty[w, :, v].numpy(), color="#1d2433", marker="o", markersize=3, linewidth=1.4, label="truth")
        ax.plot(future, tp[w, :, v].numpy(), color="#2f6fdf", marker="o", markersize=3, linewidth=1.6, label="forecast")
        ax.fill_between(future, (tp[w, :, v] - width[:, v]).numpy(), (tp[w, :, v] + width[:, v]).numpy(), color="#2f6fdf", alpha=0.2,
                        label=f"{int(COVERAGE * 100)} % interval")
        ax.set_title(str(names[v]))
        ax.set_xlabel("step (0 = first forecast)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    img = page.image(page.figure_svg(fig), "image/svg+xml", alt="forecast with interval", width=int(360 * len(shown)))
    rows = [["test MSE (normalised)", mse], ["test MAE (normalised)", mae], [f"test coverage of the {int(COVERAGE * 100)} % interval", inside],
            ["test windows", int(ty.shape[0])]]
    return (f"<h3>Forecasts</h3>{img}<p class=\"note\">The last test window, first {len(shown)} variates, on the data set's normalised "
            f"scale. The interval is the forecast +- the {int(COVERAGE * 100)} % quantile of the absolute validation errors at each step and "
            f"variate (split conformal, {int(vy.shape[0])} validation windows).</p>" + page.table(["test", "value"], rows, numeric={1}, cls="eval"))


def _plugins(manifest: dict) -> str:
    comps = manifest.get("components") or {}
    if not comps:
        return '<p class="note">No plugins.json in the run directory.</p>'
    rows = [[key, c.get("kind"), c.get("name"), c.get("plugin"), c.get("distribution"), c.get("version")] for key, c in comps.items()]
    out = "<h3>Components</h3>" + page.table(["config key", "kind", "component", "plugin", "distribution", "version"], rows)
    plugins = manifest.get("plugins") or {}
    if plugins:
        chips = "".join(f"<span>{esc(name)} · {esc(p.get('distribution'))} {esc(p.get('version'))}</span>" for name, p in sorted(plugins.items()))
        out += f'<h3>Plugins installed when it was trained</h3><div class="chips">{chips}</div>'
    return out


def _files(run_dir: Path, logs: RunLogs) -> str:
    rows = []
    for path in sorted(run_dir.rglob("*")):
        inner = path.relative_to(run_dir)
        if not path.is_file() or (inner.parts[0] == "wandb" and path not in logs.sources):
            continue  # wandb's own bookkeeping files: only its transaction logs are listed
        rows.append([str(inner), path.stat().st_size])
    more = f'<p class="note">and {len(rows) - 200} more files</p>' if len(rows) > 200 else ""
    return page.table(["file", "bytes"], rows[:200], numeric={1}) + more
