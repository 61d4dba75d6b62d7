"""Config composition and validation (OmegaConf YAML, no code execution).

A config is a YAML file. ``defaults: [base.yaml, ...]`` (paths relative to the file) are merged
first, then the file, then ``key=value`` command-line overrides. Component nodes
``{name: ..., <fields>}`` are validated against their record's config dataclass before anything
heavy is built. Errors are :class:`~genloom.core.errors.ConfigError` naming the config path.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from genloom.core import constraints as _constraints
from genloom.core.constraints import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Seed
from genloom.core.errors import ConfigError, closest

#: Top-level config keys that hold one component node, and their kind.
COMPONENT_KEYS = {
    "data": "dataset",
    "tokenizer": "tokenizer",
    "head": "head",
    "backbone": "backbone",
    "objective": "objective",
    "decoder": "decoder",
}
#: Top-level keys that hold a list of component nodes.
LIST_KEYS = {"processors": "processor", "callbacks": "callback"}


@dataclasses.dataclass
class TrainerConfig:
    """Training loop settings (passed on to ``lightning.Trainer``)."""

    max_steps: PositiveInt = 1000
    """Optimizer steps to train for."""
    max_time_minutes: PositiveFloat | None = None
    """Stop after this many minutes of training (wall clock), whatever max_steps says."""
    precision: str = "32"
    """'32', 'bf16-mixed' or '16-mixed'."""
    accelerator: str = "auto"
    devices: PositiveInt = 1
    strategy: str = "auto"
    """Lightning strategy: 'auto', 'ddp', 'ddp_spawn', 'fsdp'..."""
    num_nodes: PositiveInt = 1
    gradient_clip_val: PositiveFloat | None = 1.0
    accumulate_grad_batches: PositiveInt = 1
    val_every_steps: PositiveInt = 200
    val_batches: PositiveInt | None = None
    """Cap on validation batches per periodic check (None: the whole split). The final validation
    that writes metrics.json always covers the whole held-out split."""
    checkpoint_every_steps: PositiveInt = 200
    log_every_steps: PositiveInt = 10
    compile: bool = False
    """Wrap the backbone in torch.compile."""
    deterministic: bool = False
    progress: bool = True
    threads: PositiveInt | None = None
    """torch.set_num_threads for the run (None: torch's default)."""

    def __post_init__(self):
        allowed = ("32", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64")
        if str(self.precision) not in allowed:
            raise ValueError(f"precision must be one of {', '.join(allowed)}, got '{self.precision}'")


@dataclasses.dataclass
class OptimizerConfig:
    """AdamW with linear warmup and cosine decay (the default), or a constant rate."""

    lr: PositiveFloat = 3e-4
    weight_decay: NonNegativeFloat = 0.1
    betas: tuple[Fraction, Fraction] = (0.9, 0.95)
    eps: PositiveFloat = 1e-8
    warmup_steps: NonNegativeInt = 100
    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    min_lr_ratio: _constraints.Probability = 0.1
    """Final learning rate as a fraction of lr (cosine and linear schedules)."""


@dataclasses.dataclass
class GenerateConfig:
    """Defaults for ``genloom generate`` and the quickstart's sample."""

    prompt: str = ""
    max_new_tokens: PositiveInt = 200
    num_samples: PositiveInt = 1
    seed: Seed | None = None
    """Seed of the sampler; None draws a fresh one each time (the seed used is printed and in the metrics)."""
    cache: Literal["dynamic", "static"] = "dynamic"
    """'static': decode through a preallocated KV cache of fixed shape (attention backbones that
    support it; see docs/generation.md), the precondition of ``compile``."""
    compile: bool = False
    """Run each one-token decode step through torch.compile (needs cache: static; CUDA graphs on GPU)."""

    def __post_init__(self):
        if self.compile and self.cache != "static":
            raise ValueError(f"generate.compile: true needs generate.cache: static (got cache '{self.cache}'): the dynamic cache changes shape at every step")


@dataclasses.dataclass
class RunConfig:
    """The top-level fields that are not components."""

    seed: Seed = 0
    run_dir: str | None = None
    """Where the run writes its config, checkpoints and weights (default runs/<config name>)."""
    logger: Literal["wandb", "csv", "none"] = "wandb"
    """wandb runs offline unless WANDB_MODE says otherwise; it never asks for a login."""
    project: str = "genloom"
    kernels: dict[str, str] = dataclasses.field(default_factory=dict)
    """Pin a backend per op, e.g. {attention: sdpa}; unnamed ops pick the best usable backend."""


SECTION_SCHEMAS = {"trainer": TrainerConfig, "optimizer": OptimizerConfig, "generate": GenerateConfig}


# ---------------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------------

def _load_yaml(path: Path):
    from omegaconf import OmegaConf
    import yaml

    if not path.exists():
        raise ConfigError(f"config file '{path}' does not exist")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})", source=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", source=str(path)) from None
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"malformed YAML: {problem}", source=where) from None
    if parsed is not None and not isinstance(parsed, dict):
        raise ConfigError(f"the top level of a config must be a mapping, got a {type(parsed).__name__}", source=str(path))
    try:
        cfg = OmegaConf.create(text)
    except Exception as exc:
        raise ConfigError(f"could not read YAML: {exc}", source=str(path)) from None
    if not isinstance(cfg, typing.cast(type, type(OmegaConf.create({})))):
        raise ConfigError("the top level of a config must be a mapping", source=str(path))
    return cfg


def _bounded_nesting(fn):
    """A config nested so deeply that parsing or resolving it recurses past Python's limit is a
    ConfigError, not a RecursionError."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RecursionError:
            source = args[0] if args and isinstance(args[0], (str, Path)) else None
            raise ConfigError("the config is nested too deeply (mappings, lists or interpolations thousands of levels deep)",
                              source=str(source) if source else None) from None

    return wrapper


@_bounded_nesting
def compose(path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None):
    """Compose a config: ``defaults`` includes, then the file, then ``key=value`` overrides."""
    from omegaconf import OmegaConf

    parts = [OmegaConf.create(base or {})]
    if path is not None:
        parts.extend(_compose_file(Path(path), seen=()))
    try:
        cfg = OmegaConf.merge(*parts)
    except Exception as exc:  # e.g. a value in one file where an included file has a section
        raise ConfigError(f"could not merge the config with its defaults: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                          source=str(path)) from None
    items = list(overrides or [])
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
    # a component's `name` first: it starts a fresh node that the item's other overrides then fill
    items.sort(key=lambda item: not _is_name_override(item.partition("=")[0]))
    for item in items:
        key, _, value = item.partition("=")
        try:
            parsed = OmegaConf.from_dotlist([f"{key}={value}"])
        except Exception as exc:
            raise ConfigError(f"could not parse override '{item}': {exc}", path=key) from None
        if _replaces_component(cfg, key, parsed):
            continue
        try:
            cfg = OmegaConf.merge(cfg, parsed)
        except Exception as exc:
            raise ConfigError(f"could not apply override '{item}': {type(exc).__name__}: {str(exc).splitlines()[0]}", path=key) from None
    if "defaults" in cfg:
        del cfg["defaults"]
    return cfg


def _is_name_override(key: str) -> bool:
    return key == "name" or key.endswith(".name") or key in COMPONENT_KEYS


def _replaces_component(cfg, key: str, parsed) -> bool:
    """Apply ``key=value`` as a fresh component node when it names another component than the one there.

    ``decoder.name=beam`` (or ``decoder=beam``, or ``decoder={name: beam, ...}``) over a node of
    another name replaces the node: the old component's fields do not belong to the new one.
    """
    from omegaconf import DictConfig, OmegaConf

    parent, _, leaf = key.rpartition(".")
    try:
        new = OmegaConf.select(parsed, key, throw_on_resolution_failure=False)
        if leaf == "name" and parent:
            node_key, fresh = parent, {"name": new}
        elif isinstance(new, str) or isinstance(new, DictConfig):
            node_key, fresh = key, ({"name": new} if isinstance(new, str) else OmegaConf.to_container(new))
            if not (isinstance(fresh, dict) and "name" in fresh):
                return False
        else:
            return False
        node = OmegaConf.select(cfg, node_key, throw_on_resolution_failure=False)
        if not isinstance(node, DictConfig) or "name" not in node:
            return False
        old = node._get_node("name")._value()
        if old == fresh["name"]:
            return False
        OmegaConf.update(cfg, node_key, fresh, merge=False)
    except Exception:
        return False  # the plain merge reports what is wrong
    return True


def _compose_file(path: Path, seen: tuple):
    from omegaconf import OmegaConf

    path = path.resolve()
    if path in seen:
        raise ConfigError("config includes itself (defaults cycle)", source=str(path))
    cfg = _load_yaml(path)
    parts = []
    includes = cfg.pop("defaults", None)
    if includes is not None:
        if isinstance(includes, str):
            includes = [includes]
        elif not OmegaConf.is_list(includes):
            raise ConfigError(f"'defaults' must be a list of config file names, got {includes!r}", path="defaults", source=str(path))
        for inc in OmegaConf.to_container(includes):
            if not isinstance(inc, str):
                raise ConfigError(f"'defaults' entries must be file names, got {inc!r}", path="defaults", source=str(path))
            target = (path.parent / inc)
            if target.suffix == "":
                target = target.with_suffix(".yaml")
            parts.extend(_compose_file(target, seen + (path,)))
    parts.append(cfg)
    return parts


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    origin = get_origin(tp)
    if origin is Annotated:
        return _type_name(get_args(tp)[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def convert(value: Any, tp, path: str):
    """Check ``value`` against the annotation ``tp`` and convert it (int -> float, list -> tuple).

    ``Annotated[T, Ge(1), ...]`` constraints are checked after the type (see
    :mod:`genloom.core.constraints`); a value out of range raises ``constraints.Violation``.
    """
    if tp is Any or tp is object:
        return value
    origin = get_origin(tp)
    if origin is Annotated:
        inner, *metadata = get_args(tp)
        if isinstance(value, float) and math.isinf(value) and any(m is _constraints.ALLOW_INFINITY for m in metadata):
            converted = value  # a limit the field declares meaningful; the range is still checked
        else:
            converted = convert(value, inner, path)
        try:
            _constraints.check(converted, _constraints.constraints_of(metadata))
        except TypeError:
            raise _Mismatch(tp) from None
        except _constraints.Violation as exc:
            exc.path = getattr(exc, "path", None) or path
            raise
        return converted
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return convert(value, arg, path)
            except _Mismatch:
                continue
        raise _Mismatch(tp)
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch(tp)
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise _Mismatch(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch(tp)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -(2**63) <= value < 2**63:
                exc = _constraints.Violation(f"{value!r} is not allowed: an int field takes a 64-bit integer")
                exc.path = path
                raise exc
            return value
        raise _Mismatch(tp)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                finite = _constraints.finite(float(value))
            except OverflowError:  # an int beyond any float
                finite = False
            if not finite:
                exc = _constraints.Violation(f"{value!r} is not allowed: a float field takes a finite number")
                exc.path = path
                raise exc
            return float(value)
        raise _Mismatch(tp)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # YAML reads 32 for precision: "32"
        raise _Mismatch(tp)
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch(tp)
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise _Mismatch(tp)
            return tuple(convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [convert(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch(tp)
        kt, vt = (get_args(tp) or (Any, Any))
        return {convert(k, kt, path): convert(v, vt, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch(tp)
        return build_dataclass(tp, value, path)
    if isinstance(value, tp):
        return value
    raise _Mismatch(tp)


def build_dataclass(cls, values: dict, path: str, *, skip: tuple[str, ...] = ("name",), source: str | None = None):
    """Validate ``values`` against dataclass ``cls`` and build it; errors name ``path``.

    Types and ``Annotated`` range constraints are checked field by field; a ``ValueError`` from
    ``__post_init__`` is re-raised at the path of the first field its message names.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key in skip:
            continue
        if key not in fields:
            guess = closest(key, fields)
            hint = f" Did you mean '{guess}'?" if guess else ""
            allowed = ", ".join(fields) or "(none)"
            raise ConfigError(f"unknown field '{key}' for {cls.__name__}.{hint} Allowed fields: {allowed}.", path=_join(path, key), source=source)
        try:
            kwargs[key] = convert(value, hints[key], _join(path, key))
        except _Mismatch:
            raise ConfigError(f"{value!r} ({type(value).__name__}) is not a valid {_type_name(hints[key])}", path=_join(path, key), source=source) from None
        except _constraints.Violation as exc:
            raise ConfigError(str(exc), path=getattr(exc, "path", None) or _join(path, key), source=source) from None
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing required field(s) {', '.join(repr(m) for m in missing)} of {cls.__name__}", path=path or None, source=source)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc), path=_field_path(path, str(exc), fields) or None, source=source) from None
    except ConfigError:
        raise
    except Exception as exc:  # a plugin's __post_init__ is plugin code: its bug is reported, not a traceback
        raise ConfigError(f"{cls.__name__} rejected the values ({type(exc).__name__}: {exc})", path=path or None, source=source) from None


def _field_path(path: str, message: str, fields) -> str:
    """``path.<field>`` for the field a ``__post_init__`` message names first (else ``path``)."""
    import re

    best = None
    for name in fields:
        m = re.search(rf"(?<!\w){re.escape(name)}(?!\w)", message)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), name)
    return _join(path, best[1]) if best else path


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclasses.dataclass
class ComponentSpec:
    """A validated component node: its registry record and built config dataclass."""

    path: str
    record: Any
    config: Any


@dataclasses.dataclass
class ValidatedConfig:
    """The composed config (OmegaConf), the run settings and every component validated."""

    raw: Any
    run: RunConfig
    sections: dict[str, Any]
    components: dict[str, ComponentSpec]
    lists: dict[str, list[ComponentSpec]]
    extra: dict[str, Any]

    def to_container(self) -> dict:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(self.raw, resolve=True)

    def to_saved(self) -> dict:
        """The resolved config as a run saves (and prints) it: every value that comes from the
        environment (``${oc.env:...}``, directly or through other interpolations) keeps its
        interpolation instead of its value, so secrets never reach config.yaml or a checkpoint."""
        return saved_container(self.raw)


#: Bounds of interpolation resolution (a few hundred bytes of nested ``${...}`` can otherwise
#: expand to gigabytes): the estimated size of the resolved config, and the reference depth.
MAX_RESOLVED_CHARS = 16_000_000
MAX_INTERPOLATION_DEPTH = 32

_REF = re.compile(r"\$\{\s*(\.*[A-Za-z0-9_\-\[\]]+(?:\.[A-Za-z0-9_\-\[\]]+)*)\s*\}")


class _Interpolations:
    """Sizes and environment taint of the unresolved config tree, computed without resolving it."""

    def __init__(self, raw):
        self.raw = raw
        self._size: dict[tuple, int] = {}
        self._taint: dict[tuple, bool] = {}
        self._stack: list[tuple] = []

    def lookup(self, path: tuple):
        node = self.raw
        for key in path:
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and isinstance(key, int) and -len(node) <= key < len(node):
                node = node[key]
            elif isinstance(node, list) and isinstance(key, str) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                raise KeyError(path)
        return node

    @staticmethod
    def target(path: tuple, ref: str) -> tuple:
        dots = len(ref) - len(ref.lstrip("."))
        base = path[:-dots] if dots else ()
        keys = []
        for part in ref[dots:].split("."):
            head, *idx = part.replace("]", "").split("[")
            if head:
                keys.append(head)
            keys.extend(int(i) if i.isdigit() else i for i in idx)
        return tuple(base) + tuple(keys)

    def _visit(self, path: tuple):
        if path in self._size:
            return
        if path in self._stack:
            chain = " -> ".join(_dotted(p) for p in self._stack[self._stack.index(path):] + [path])
            raise ConfigError(f"interpolation cycle: {chain}", path=_dotted(path) or None)
        if len(self._stack) > MAX_INTERPOLATION_DEPTH:
            raise ConfigError(f"interpolations nest deeper than {MAX_INTERPOLATION_DEPTH} references", path=_dotted(path) or None)
        self._stack.append(path)
        try:
            node = self.lookup(path)
        except KeyError:
            node = ""
        size, taint = 2, False
        if isinstance(node, dict):
            for k in node:
                self._visit(path + (k,))
                size += len(str(k)) + 2 + self._size[path + (k,)]
                taint |= self._taint[path + (k,)]
        elif isinstance(node, list):
            for i in range(len(node)):
                self._visit(path + (i,))
                size += 2 + self._size[path + (i,)]
                taint |= self._taint[path + (i,)]
        elif isinstance(node, str) and "${" in node:
            size = len(node)
            taint = "oc.env" in node
            for m in _REF.finditer(node):
                ref = self.target(path, m.group(1))
                self._visit(ref)
                size += self._size[ref] - len(m.group(0))
                taint |= self._taint[ref]
                if size > MAX_RESOLVED_CHARS:
                    break
        else:
            size = len(str(node))
        self._stack.pop()
        if size > MAX_RESOLVED_CHARS:
            raise ConfigError(f"interpolations would expand this value to more than {MAX_RESOLVED_CHARS:,} characters "
                              f"(nested ${{...}} references repeat their targets); simplify the config", path=_dotted(path) or None)
        self._size[path], self._taint[path] = size, taint

    def check(self) -> None:
        self._visit(())

    def tainted(self, path: tuple) -> bool:
        self._visit(path)
        return self._taint[path]


def _dotted(path: tuple) -> str:
    out = ""
    for k in path:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out


def check_interpolations(cfg) -> None:
    """Refuse non-string keys, interpolation cycles, references nested too deep and expansion bombs, before resolving."""
    from omegaconf import OmegaConf

    try:
        raw = OmegaConf.to_container(cfg, resolve=False)
        _check_keys(raw, ())
        _Interpolations(raw).check()
    except RecursionError:
        raise ConfigError("the config is nested too deeply") from None


def _check_keys(node, path: tuple) -> None:
    """Every mapping key of a config is a string (YAML reads ``1:`` or ``true:`` as a number or a bool)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                raise ConfigError(f"key {key!r} ({type(key).__name__}) is not a string; quote it in the YAML", path=_dotted(path) or None)
            _check_keys(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_keys(value, path + (i,))


def saved_container(cfg) -> dict:
    """``cfg`` resolved, except values that depend on ``${oc.env:...}``, which keep their interpolation."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=False)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    walker = _Interpolations(raw)

    def merge(r, v, path):
        if isinstance(r, dict) and isinstance(v, dict):
            return {k: merge(r[k], v.get(k), path + (k,)) for k in r}
        if isinstance(r, list) and isinstance(v, list) and len(r) == len(v):
            return [merge(a, b, path + (i,)) for i, (a, b) in enumerate(zip(r, v))]
        return r if walker.tainted(path) else v

    return merge(raw, resolved, ())


def validate_node(registry, kind: str, node, path: str, pins: dict | None = None) -> ComponentSpec:
    """Validate one component node. ``pins`` maps a config path to the record of the component a
    saved run was built with (plugins.json): that plugin's component is used, whoever else offers the name."""
    if isinstance(node, str):
        node = {"name": node}
    if not isinstance(node, dict):
        raise ConfigError(f"expected a component node {{name: ..., <fields>}} of kind {kind}, got {type(node).__name__}", path=path)
    if "name" not in node or not isinstance(node["name"], str):
        allowed = ", ".join(registry.names(kind))
        raise ConfigError(f"component node has no 'name' (a {kind}; allowed: {allowed})", path=path)
    name = node["name"]
    pin = (pins or {}).get(path)
    if pin and ":" not in name and pin.get("name") == name and pin.get("plugin"):
        offered = [r for r in registry.components(kind) if r.name == name and r.plugin == pin["plugin"]]
        if not offered:
            raise ConfigError(f"this run was built with {kind} '{name}' from plugin '{pin['plugin']}' (distribution "
                              f"'{pin.get('distribution')}' {pin.get('version', '')}), which is not loaded: install or enable it "
                              f"(or name another plugin's component as plugin:name)", path=_join(path, "name"))
        name = f"{pin['plugin']}:{name}"
    record = registry.get(kind, name, path=_join(path, "name"))
    if record.kind == "kernel":
        raise ConfigError("kernels are chosen under 'kernels: {op: backend}', not as nodes", path=path)
    cfg = build_dataclass(record.config, node, path)
    validate_nested_nodes(registry, cfg, path)
    return ComponentSpec(path=path, record=record, config=cfg)


def validate_nested_nodes(registry, cfg, path: str) -> None:
    """Validate the component nodes a config holds in :func:`~genloom.core.records.node_field` fields
    (a decoder's ``reward``, a wrapper's ``base``) like top-level nodes, naming the nested path."""
    from genloom.core.records import NODE_KIND

    if not dataclasses.is_dataclass(cfg):
        return
    for f in dataclasses.fields(cfg):
        kind = f.metadata.get(NODE_KIND)
        value = getattr(cfg, f.name, None)
        if kind is None or value is None:
            continue
        where = _join(path, f.name)
        if f.metadata.get("genloom_many"):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"expected a list of component nodes of kind {kind}", path=where)
            for i, node in enumerate(value):
                validate_node(registry, kind, node, f"{where}[{i}]")
        else:
            validate_node(registry, kind, value, where)



@_bounded_nesting
def validate(cfg, registry=None, pins: dict | None = None) -> ValidatedConfig:
    """Validate a composed config against the registry; nothing heavy is built.

    ``pins`` (config path -> plugins.json component record) makes a saved run load the components
    of the plugins that built it (see :func:`validate_node`)."""
    from omegaconf import OmegaConf

    from genloom.core.plugins import get_registry

    registry = registry or get_registry()
    registry.hook().genloom_configure(config=cfg)
    check_interpolations(cfg)
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:
        raise ConfigError(f"could not resolve interpolations: {str(exc).splitlines()[0]}") from None
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    run = build_dataclass(RunConfig, {k: v for k, v in data.items() if k in run_fields}, "")
    for op, backend in run.kernels.items():
        names = [r.name for r in registry.kernels_for(op)]
        if not names:
            known = sorted({r.op for r in registry.components("kernel")})
            raise ConfigError(f"unknown kernel op '{op}' (known: {', '.join(known)})", path=f"kernels.{op}")
        if backend != "auto" and backend not in names:
            guess = closest(backend, names)
            raise ConfigError(f"unknown backend '{backend}' for op '{op}'.{' Did you mean ' + repr(guess) + '?' if guess else ''} Allowed: auto, {', '.join(names)}", path=f"kernels.{op}")
    sections = {}
    for key, schema in SECTION_SCHEMAS.items():
        node = data.get(key) or {}
        if not isinstance(node, dict):
            raise ConfigError(f"expected a mapping, got {type(node).__name__}", path=key)
        sections[key] = build_dataclass(schema, node, key, skip=())
    components: dict[str, ComponentSpec] = {}
    lists: dict[str, list[ComponentSpec]] = {}
    single = dict(COMPONENT_KEYS)
    many = dict(LIST_KEYS)
    for kind in registry.kinds.values():
        if kind.config_key:
            (many if kind.many else single)[kind.config_key] = kind.name
    for key, kind in single.items():
        if data.get(key) is not None:
            components[key] = validate_node(registry, kind, data[key], key, pins)
    for key, kind in many.items():
        nodes = data.get(key) or []
        if not isinstance(nodes, list):
            raise ConfigError(f"expected a list of component nodes of kind {kind}", path=key)
        lists[key] = [validate_node(registry, kind, n, f"{key}[{i}]", pins) for i, n in enumerate(nodes)]
    known = set(single) | set(many) | set(SECTION_SCHEMAS) | run_fields
    extra = {k: v for k, v in data.items() if k not in known}
    for key in extra:
        guess = closest(key, known)
        hint = f" Did you mean '{guess}'?" if guess else ""
        raise ConfigError(f"unknown top-level key '{key}'.{hint} Allowed: {', '.join(sorted(known))}.", path=key)
    return ValidatedConfig(raw=cfg, run=run, sections=sections, components=components, lists=lists, extra=extra)


def load(path=None, overrides=None, registry=None) -> ValidatedConfig:
    """Compose and validate in one call."""
    return validate(compose(path, overrides), registry)


def describe_fields(cls) -> list[dict]:
    """Fields of a config dataclass with their types, defaults and docstrings (for ``genloom describe``)."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "<required>"
        kind = f.metadata.get("genloom_kind")
        shown = (f"list of {kind} nodes" if f.metadata.get("genloom_many") else f"{kind} node") if kind else _type_name(hints[f.name])
        out.append({"name": f.name, "type": shown, "default": default, "doc": docs.get(f.name, ""),
                    "allowed": allowed_range(hints[f.name])})
    return out


def allowed_range(tp) -> str:
    """The declared range of an annotation in words (``>= 1``; ``items >= 0 and <= 1``), or ``""``."""
    origin = get_origin(tp)
    if origin is Annotated:
        inner, *metadata = get_args(tp)
        return _constraints.describe(_constraints.constraints_of(metadata)) or allowed_range(inner)
    args = [a for a in get_args(tp) if a is not type(None) and a is not Ellipsis]
    if origin in (Union, types.UnionType):
        return next((r for r in map(allowed_range, args) if r), "")
    if origin in (list, tuple):
        inner = next((r for r in map(allowed_range, args) if r), "")
        return f"items {inner}" if inner else ""
    return ""


def field_docs(cls) -> dict[str, str]:
    """Attribute docstrings (a string literal right after a field), as litgpt and Sphinx read them."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) and isinstance(nxt.value.value, str):
                    docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
