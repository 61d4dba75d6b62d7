"""Hugging Face interop: convert a Llama-architecture checkpoint into a genloom run directory.

``genloom import hf SRC_DIR --out DIR`` reads what ``transformers``' ``save_pretrained`` wrote
(``config.json`` + safetensors shards; grouped-query attention; tied or untied embeddings; the
EOS set and decoding defaults of ``generation_config.json``, see :func:`generation_defaults`) and
writes a run directory that :func:`genloom.load` and ``genloom generate`` accept. The baseline
transformer uses Llama's parameter names, so the conversion is a renaming. ``transformers`` itself
is not needed.
"""

from __future__ import annotations

import json
from pathlib import Path

from genloom.core.errors import CheckpointError, ConfigError


def llama_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.exists():
        raise CheckpointError(f"'{src}' has no config.json (expected a directory written by save_pretrained)")
    hf = json.loads(path.read_text())
    arch = (hf.get("architectures") or ["?"])[0]
    if hf.get("model_type") not in ("llama", "mistral", "qwen2") and "Llama" not in arch:
        raise ConfigError(f"only Llama-architecture checkpoints convert (got model_type '{hf.get('model_type')}', architecture '{arch}')")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ConfigError("checkpoints with attention/MLP biases are not supported by the baseline transformer")
    rope = hf.get("rope_scaling") or {}
    params = hf.get("rope_parameters") or {}
    if (rope and rope.get("rope_type", rope.get("type")) not in (None, "default")) or params.get("rope_type", "default") != "default":
        raise ConfigError("only the default rotary embedding converts (no rope scaling)")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    n_heads = hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hf["hidden_size"] // n_heads):
        raise ConfigError("a head_dim other than hidden_size / num_attention_heads is not supported")
    gen = generation_config(src)
    eos = gen.get("eos_token_id", hf.get("eos_token_id"))
    if isinstance(eos, list):
        eos = list(dict.fromkeys(int(e) for e in eos)) or None
        eos = eos[0] if eos and len(eos) == 1 else eos
    decoder, processors, max_new = generation_defaults(gen)
    cfg = {
        "tokenizer": {"name": "ids", "vocab_size": hf["vocab_size"], "eos_id": eos},
        "head": {"name": "lm", "tie_weights": bool(hf.get("tie_word_embeddings", False))},
        "backbone": {
            "name": "transformer",
            "d_model": hf["hidden_size"],
            "n_layers": hf["num_hidden_layers"],
            "n_heads": n_heads,
            "n_kv_heads": hf.get("num_key_value_heads", n_heads),
            "ffn_hidden": hf["intermediate_size"],
            "rope_theta": float(theta),
            "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
            "max_positions": hf.get("max_position_embeddings"),
        },
        "objective": {"name": "next-token"},
        "decoder": decoder,
        "logger": "none",
    }
    if processors:
        cfg["processors"] = processors
    if max_new is not None:
        cfg["generate"] = {"max_new_tokens": int(max_new)}
    return cfg


def generation_config(src: Path) -> dict:
    """``generation_config.json`` of a checkpoint directory ({} when there is none)."""
    path = src / "generation_config.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"'{path}' is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"'{path}' does not hold a JSON object")
    return data


def generation_defaults(gen: dict) -> tuple[dict, list, int | None]:
    """The decoder node, processor nodes and max_new_tokens that a ``generation_config.json`` asks for.

    The keys map through the same shorthand as :meth:`genloom.core.generation.Generator.generate`.
    transformers samples with ``top_k=50`` when ``do_sample`` is set without a ``top_k``, so that
    default is written out. Sampling settings of a greedy or beam config are ignored, as transformers
    ignores them. ``max_length`` (prompt included) has no equivalent and is not imported.
    """
    from genloom.core.generation import SAMPLING_ONLY, SHORTHAND, apply_shorthand

    opts = {k: gen[k] for k in SHORTHAND if gen.get(k) is not None and k not in ("eos_token_id", "num_return_sequences")}
    sample = bool(opts.get("do_sample"))
    if sample and "top_k" not in opts:
        opts["top_k"] = 50
    if not sample:
        opts = {k: v for k, v in opts.items() if k not in SAMPLING_ONLY}
    if not sample and int(opts.get("num_beams") or 1) <= 1:
        opts = {k: v for k, v in opts.items() if k not in ("length_penalty", "early_stopping")}
    opts.setdefault("do_sample", False)
    if int(opts.get("num_beams") or 1) > 1 and not sample:
        opts.pop("do_sample")
    try:
        decoder, processors = apply_shorthand(opts, {"name": "greedy"}, [])
    except Exception as exc:
        raise ConfigError(f"generation_config.json: {exc}") from None
    return decoder, processors, gen.get("max_new_tokens")


def rename(key: str) -> str | None:
    if key == "model.embed_tokens.weight":
        return "head.embed_tokens.weight"
    if key == "lm_head.weight":
        return "head.lm_head.weight"
    if key == "model.norm.weight":
        return "backbone.norm.weight"
    if key.startswith("model.layers."):
        return "backbone." + key[len("model."):]
    if key.endswith("rotary_emb.inv_freq"):
        return None
    raise CheckpointError(f"unexpected tensor '{key}' in a Llama checkpoint")


def import_llama(src_dir, out_dir, *, overwrite: bool = False) -> Path:
    """Convert ``src_dir`` into the run directory ``out_dir``; an existing run there is refused unless ``overwrite``."""
    from genloom.core import runio

    src, out = Path(src_dir), Path(out_dir)
    if not src.is_dir():
        raise CheckpointError(f"'{src}' is not a directory (expected a directory written by save_pretrained)")
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out '{out}' exists and is not a directory")
    if runio.run_content(out) and not overwrite:  # checked before any work; checked again under the lock
        raise CheckpointError(f"'{out}' already holds files ({', '.join(runio.run_content(out)[:6])}); nothing was changed. "
                              f"Pass --overwrite to replace it, or choose another --out")

    import torch
    from safetensors.torch import load_file

    from genloom.core import config as config_mod
    from genloom.core.model import assemble
    from genloom.core.plugins import get_registry
    cfg = llama_config(src)
    validated = config_mod.validate(config_mod.compose(None, None, base=cfg))
    built = assemble(validated, data=False)
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no .safetensors files in '{src}' (save with safe_serialization=True)")
    state = {}
    for f in files:
        for k, v in load_file(str(f)).items():
            new = rename(k)
            if new is not None:
                state[new] = v
    if built.model.head.tied:
        state.pop("head.lm_head.weight", None)
        state["head.lm_head.weight"] = state["head.embed_tokens.weight"]
    model_sd = built.model.state_dict()
    missing = [k for k in model_sd if k not in state]
    if missing:
        raise CheckpointError(f"the checkpoint in '{src}' lacks {missing[:5]}")
    dtype = next(iter(state.values())).dtype
    built.model.to(dtype)
    with torch.no_grad():
        for k, v in model_sd.items():
            v.copy_(state[k])
    with runio.prepare_run_dir(out, overwrite=overwrite):
        runio.save_weights(out, built.model)
        runio.save_config(out, validated, get_registry())  # last: a directory with config.yaml is a complete run
    return out
