"""Implementations of the CLI's sub-commands (imported lazily by :mod:`genloom.core.cli`)."""

from __future__ import annotations

import dataclasses
import json
import sys

from genloom.core.errors import ConfigError


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _registry():
    from genloom.core.plugins import get_registry

    return get_registry()


# -- listing ----------------------------------------------------------------------------------
def cmd_plugins(args):
    reg = _registry()
    infos = sorted(reg.plugins.values(), key=lambda p: p.name)
    if not args.all:
        infos = [p for p in infos if not p.error]
    if args.json:
        print(json.dumps([p.to_json() for p in infos], indent=2))
        return 0
    from rich.table import Table

    table = Table(title="genloom plugins")
    for col in ("plugin", "distribution", "version", "components", "paper"):
        table.add_column(col)
    for p in infos:
        comps = ", ".join(f"{c.kind}:{c.key}" for c in p.components) if not p.error else f"[red]failed: {p.error}[/red]"
        papers = "; ".join(sorted({c.paper.cite() for c in p.components if c.paper}))
        table.add_row(p.name, p.distribution, p.version, comps, papers)
    _console().print(table)
    failed = reg.failed()
    if failed and not args.all:
        print(f"{len(failed)} plugin(s) failed to load; see `genloom plugins --all`.", file=sys.stderr)
    return 0


def cmd_components(args):
    reg = _registry()
    if args.kind and args.kind not in reg.kinds:
        from genloom.core.errors import closest

        guess = closest(args.kind, reg.kinds)
        raise ConfigError(f"unknown component kind '{args.kind}'.{' Did you mean ' + repr(guess) + '?' if guess else ''} Known: {', '.join(reg.kinds)}")
    comps = reg.components(args.kind)
    if args.json:
        print(json.dumps([c.to_json() for c in comps], indent=2))
        return 0
    from rich.table import Table

    table = Table(title=f"genloom components{' (' + args.kind + ')' if args.kind else ''}")
    for col in ("kind", "name", "plugin", "summary"):
        table.add_column(col)
    for c in comps:
        table.add_row(c.kind, c.key, c.plugin, c.summary)
    _console().print(table)
    return 0


def cmd_describe(args):
    from genloom.core.config import describe_fields

    reg = _registry()
    rec = reg.get(args.kind, args.name)
    fields = describe_fields(rec.config)
    info = rec.to_json()
    info["fields"] = [{**f, "default": _jsonable(f["default"])} for f in fields]
    info["doc"] = " ".join((rec.config.__doc__ or "").split()) if rec.config.__doc__ and not rec.config.__doc__.startswith(rec.config.__name__ + "(") else ""
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    con = _console()
    con.print(f"[bold]{rec.kind} {rec.key}[/bold]  ({rec.plugin}, {rec.distribution} {rec.version})")
    if rec.summary:
        con.print(rec.summary)
    if rec.paper:
        con.print(f"paper: {rec.paper.cite()}")
    if info["doc"]:
        con.print(info["doc"])
    from rich.table import Table

    table = Table(title=f"config fields ({rec.config.__name__})")
    for col in ("field", "type", "default", "doc"):
        table.add_column(col)
    for f in fields:
        table.add_row(f["name"], f["type"], repr(f["default"]), f["doc"])
    con.print(table)
    return 0


def _jsonable(v):
    try:
        json.dumps(v)
        return v
    except TypeError:
        return repr(v)


def cmd_config(args):
    from genloom.core import config as config_mod

    validated = config_mod.load(args.config, args.overrides)
    tree = validated.to_saved()  # values from the environment stay ${oc.env:...}
    if args.json:
        print(json.dumps(tree, indent=2, default=str))
    else:
        print_tree(tree, title=f"{args.config} (valid)")
    return 0


def config_tree(data, title="config"):
    """A rich Tree of a nested config (dicts and lists)."""
    from rich.tree import Tree

    def add(node, value):
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, (dict, list)) and v:
                    add(node.add(f"[bold]{k}[/bold]"), v)
                else:
                    node.add(f"[bold]{k}[/bold]: {v!r}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if isinstance(v, (dict, list)):
                    add(node.add(f"[{i}]"), v)
                else:
                    node.add(f"[{i}] {v!r}")

    tree = Tree(title)
    add(tree, data)
    return tree


def print_tree(data, title="config", console=None):
    (console or _console()).print(config_tree(data, title))


def cmd_kernels(args):
    import torch

    from genloom.core import kernels

    reg = _registry()
    ops = sorted({c.op for c in reg.components("kernel")})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for op in ops:
        chosen = None
        try:
            chosen = kernels.select(op, device=device, dtype=torch.float32)
        except RuntimeError:
            pass
        for name, prio, reason in kernels.status(op, device=device, dtype=torch.float32):
            impl = kernels.implementation(op, name) if reason is None else None
            rows.append({"op": op, "backend": name, "priority": prio, "usable": reason is None, "reason": reason, "default": impl is not None and impl is chosen, "device": str(device)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    table = Table(title=f"kernels on {device}")
    for col in ("op", "backend", "priority", "usable", "note"):
        table.add_column(col)
    for r in rows:
        note = "default here" if r["default"] else (r["reason"] or "")
        table.add_row(r["op"], r["backend"], str(r["priority"]), "yes" if r["usable"] else "no", note)
    _console().print(table)
    return 0


# -- heavy commands ---------------------------------------------------------------------------
def cmd_train(args):
    from genloom.core import train_cli

    return train_cli.main(args.args)


def cmd_generate(args):
    from genloom.core import generate_cli

    return generate_cli.main(args)


def cmd_serve(args):
    from genloom.core import serve_cli

    return serve_cli.main(args)


def cmd_evaluate(args):
    """The objective's own ``evaluate_run(gen, options)`` where it has one, else its figures over a held-out split."""
    import genloom
    from genloom.core.errors import ConfigError

    options = {}
    for item in args.options:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"'{item}' is not of the form key=value")
        options[key] = value
    from genloom.core.evaluation import evaluate_run

    gen = genloom.load(args.run)
    print(evaluate_run(gen, options, run_path=args.run))
    return 0


def cmd_report(args):
    from genloom.reporting import report

    path = report(args.run, args.out, overwrite=args.overwrite, samples=not args.no_samples)
    print(f"wrote {path}")
    return 0


def cmd_compare(args):
    from genloom.reporting import compare
    from genloom.reporting.comparison import parse_options

    path = compare(args.run, args.decoders, args.prompts, args.out, overwrite=args.overwrite,
                   max_new_tokens=args.max_new_tokens, seed=args.seed, options=parse_options(args.set))
    print(f"wrote {path}")
    return 0


def cmd_import(args):
    from genloom.core import hf

    out = hf.import_llama(args.src_dir, args.out, overwrite=getattr(args, "overwrite", False))
    print(f"wrote genloom run directory {out}")
    return 0


def cmd_new_plugin(args):
    from genloom.core import scaffold

    path = scaffold.new_plugin(args.name, args.dir)
    print(f"created {path}\nnext: cd {path} && pip install -e . && pytest")
    return 0
