"""Run directories: what a trained run leaves behind and how it is loaded back.

A run directory holds ``config.yaml`` (the resolved config), ``plugins.json`` (the plugins and
versions that built it, and which distribution supplied each component), ``model.safetensors``
(the weights; loading never unpickles code), ``tokenizer/`` (whatever the tokenizer saves, e.g. a
trained BPE) and ``checkpoints/`` (Lightning checkpoints for exact resume).
"""

from __future__ import annotations

import json
from pathlib import Path

from genloom.core.errors import CheckpointError, ConfigError

CONFIG = "config.yaml"
PLUGINS = "plugins.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer"


def plugin_manifest(validated, registry) -> dict:
    comps = {}
    for key, spec in validated.components.items():
        comps[key] = {"kind": spec.record.kind, "name": spec.record.name, "plugin": spec.record.plugin, "distribution": spec.record.distribution, "version": spec.record.version}
    for key, specs in validated.lists.items():
        for i, spec in enumerate(specs):
            comps[f"{key}[{i}]"] = {"kind": spec.record.kind, "name": spec.record.name, "plugin": spec.record.plugin, "distribution": spec.record.distribution, "version": spec.record.version}
    plugins = {p.name: {"distribution": p.distribution, "version": p.version} for p in registry.plugins.values() if not p.error}
    return {"components": comps, "plugins": plugins}


def save_config(run_dir: Path, validated, registry) -> None:
    from omegaconf import OmegaConf

    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(validated.to_container()), run_dir / CONFIG)
    (run_dir / PLUGINS).write_text(json.dumps(plugin_manifest(validated, registry), indent=2))


def save_weights(run_dir: Path, model) -> Path:
    """Write the model's weights as safetensors (shared tensors are stored once) and the tokenizer files."""
    from safetensors.torch import save_model

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / WEIGHTS
    tmp = path.with_suffix(".tmp")
    save_model(model, str(tmp))
    tmp.replace(path)  # never leave a half-written weights file behind
    tok_dir = run_dir / TOKENIZER
    tok_dir.mkdir(exist_ok=True)
    if hasattr(model.tokenizer, "save"):
        model.tokenizer.save(tok_dir)
    return path


def load_weights(model, path: Path) -> None:
    from safetensors.torch import load_model

    if not path.exists():
        raise CheckpointError(f"weights file '{path}' does not exist")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as exc:
        raise CheckpointError(f"weights file '{path}' is truncated or corrupted ({type(exc).__name__}: {exc})") from None
    if missing or unexpected:
        raise CheckpointError(f"weights file '{path}' does not match the model built from its config: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")


def validate_run_config(run_dir: Path, overrides=None, registry=None):
    from genloom.core import config as config_mod

    cfg_path = run_dir / CONFIG
    if not cfg_path.exists():
        raise CheckpointError(f"'{run_dir}' is not a genloom run directory: {cfg_path} is missing")
    try:
        return config_mod.load(cfg_path, overrides, registry)
    except ConfigError as exc:
        manifest_path = run_dir / PLUGINS
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
            for key, comp in manifest.get("components", {}).items():
                if exc.path and exc.path.startswith(key):
                    raise ConfigError(f"{exc} This run was built with {comp['kind']} '{comp['name']}' from plugin '{comp['plugin']}': install the distribution '{comp['distribution']}' (version {comp['version']}).") from exc
        raise


def find_run_dir(path: Path) -> Path:
    path = Path(path)
    if path.is_file():
        # a weights file or a checkpoint inside run_dir/ or run_dir/checkpoints/
        for parent in (path.parent, path.parent.parent):
            if (parent / CONFIG).exists():
                return parent
        raise CheckpointError(f"no {CONFIG} found next to '{path}'")
    return path


def load_generator(path_or_config, overrides=None, registry=None, device=None):
    from genloom.core import config as config_mod
    from genloom.core.generation import Generator
    from genloom.core.model import assemble

    path = Path(path_or_config)
    if path.suffix in (".yaml", ".yml"):
        validated = config_mod.load(path, overrides, registry)
        built = assemble(validated, registry)
        return Generator(built)
    if not path.exists():
        raise CheckpointError(f"'{path}' does not exist (expected a run directory, a weights/checkpoint file or a config .yaml)")
    run_dir = find_run_dir(path)
    validated = validate_run_config(run_dir, overrides, registry)
    tok_dir = run_dir / TOKENIZER
    built = assemble(validated, registry, data=False, fit_tokenizer=False, tokenizer=_load_tokenizer(validated, registry, tok_dir))
    weights = path if path.suffix == ".safetensors" else run_dir / WEIGHTS
    if path.suffix == ".ckpt":
        load_lightning_weights(built.model, path)
    else:
        load_weights(built.model, weights)
    if device is not None:
        built.model.to(device)
    built.model.eval()
    return Generator(built, run_dir)


def _load_tokenizer(validated, registry, tok_dir: Path):
    from genloom.core.context import BuildContext
    from genloom.core.model import build_component

    ctx = BuildContext(registry)
    data = validated.components.get("data")
    if data is not None and hasattr(data.config, "bind"):
        data.config.bind(ctx)  # what the data config publishes without loading any data
    tok = build_component(validated.components["tokenizer"], ctx)
    if tok_dir.exists() and hasattr(tok, "load"):
        tok.load(tok_dir)
    return tok


def load_lightning_weights(model, ckpt: Path) -> None:
    import torch

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint '{ckpt}' is truncated or corrupted ({type(exc).__name__}: {exc})") from None
    sd = {k.removeprefix("model."): v for k, v in state.get("state_dict", {}).items()}
    model.load_state_dict(sd)
