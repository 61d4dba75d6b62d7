"""The ``genloom`` command line.

``plugins``, ``components``, ``describe`` and ``config`` never import torch or Lightning.
User errors print one paragraph and exit with code 2 (no traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from genloom.core.errors import GenloomError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genloom", description="Generative sequence models from plugins and YAML configs.")
    p.add_argument("--disable-plugin", action="append", default=[], metavar="NAME", help="do not load this plugin (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="log which kernels and plugins are chosen")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("plugins", help="list installed plugins with their distribution, version, papers and components")
    s.add_argument("--json", action="store_true")
    s.add_argument("--all", action="store_true", help="also list plugins that failed to load, with their errors")

    s = sub.add_parser("components", help="list components, of one kind or all")
    s.add_argument("kind", nargs="?")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("describe", help="config fields, types, defaults, docs and paper of one component")
    s.add_argument("kind")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("config", help="validate a config and print the resolved tree")
    s.add_argument("config")
    s.add_argument("overrides", nargs="*", metavar="key=value")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("kernels", help="every kernel op and backend, and whether it is usable here")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("train", help="train a model from a config", add_help=False)
    s.add_argument("args", nargs=argparse.REMAINDER)

    s = sub.add_parser("generate", help="generate from a run directory, checkpoint or config")
    s.add_argument("run")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="prompt=TEXT, max_new_tokens=N, num_samples=N, seed=N, out=PATH, decoder=NAME, decoder.FIELD=VALUE, and the transformers-style shorthand (temperature, top_k, top_p, num_beams...; see docs/generation.md)")
    s.add_argument("--json", action="store_true", help="print metrics as JSON at the end")

    s = sub.add_parser("serve", help="continuous batching of a JSONL file of requests (one JSON object per line) into a JSONL file of completions")
    s.add_argument("run", help="a run directory, a weights file or a config .yaml")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="decoder=NAME, decoder.FIELD=VALUE, max_new_tokens=N and seed=N (defaults for the requests), and the processor shorthand (temperature, top_k, top_p, do_sample...)")
    s.add_argument("--requests", required=True, metavar="IN.jsonl", help="requests: {\"prompt\": TEXT or \"prompt_ids\": [...] or \"source\": TEXT, \"max_new_tokens\", \"seed\", \"arrival\", \"id\", \"stop\"} per line")
    s.add_argument("--out", required=True, metavar="OUT.jsonl", help="completions, one JSON object per request, in the requests' order")
    s.add_argument("--overwrite", action="store_true", help="replace OUT.jsonl if it exists")
    s.add_argument("--max-batch-size", type=int, default=None, metavar="N", help="live requests at most (default: no limit)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true", help="print the engine's metrics as JSON at the end")

    s = sub.add_parser("evaluate", help="evaluate a run on a held-out split through its objective (forecasters: rolling origins + baselines)")
    s.add_argument("run")
    s.add_argument("options", nargs="*", metavar="key=value", help="split=test|val|train, max_batches=N, out=FILE.json, overwrite=true (forecasters: step, count, window, window_size, baselines, out)")

    s = sub.add_parser("report", help="write one offline HTML page about a run: config, curves, samples, plugins, evaluation")
    s.add_argument("run", help="a run directory written by `genloom train`")
    s.add_argument("--out", default=None, metavar="FILE", help="the HTML file to write (default: RUN/report.html)")
    s.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    s.add_argument("--no-samples", action="store_true", help="do not regenerate the text sample (no model is loaded)")

    s = sub.add_parser("compare", help="run several decoders on the same prompts and seed; write one offline HTML page")
    s.add_argument("run", help="a run directory written by `genloom train`")
    s.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompts (default: the config's generate.prompt)")
    s.add_argument("--decoders", required=True, metavar="NAME[,NAME...]", help="decoders to compare, e.g. greedy,sampling,beam")
    s.add_argument("--set", action="append", default=[], metavar="DECODER.FIELD=VALUE", help="a decoder config field, e.g. speculative.draft=runs/small (repeatable)")
    s.add_argument("--max-new-tokens", type=int, default=None, metavar="N", help="tokens per prompt (default: the config's generate.max_new_tokens)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, metavar="FILE", help="the HTML file to write (default: RUN/compare.html)")
    s.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")

    s = sub.add_parser("import", help="convert a checkpoint from another library into a genloom run directory")
    s.add_argument("source", choices=["hf"])
    s.add_argument("src_dir")
    s.add_argument("--out", required=True)
    s.add_argument("--overwrite", action="store_true", help="replace a run directory that already holds a run")

    s = sub.add_parser("new-plugin", help="scaffold a pip-installable plugin package with tests")
    s.add_argument("name")
    s.add_argument("--dir", default=".")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C while starting up (commands handle it themselves once running)
        print("genloom: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    train_at = _command_index(argv, "train")
    if train_at is not None:
        # `genloom [global options] train ...`: train_cli parses its own options (--help, --resume first...)
        args = parser.parse_args(argv[:train_at])
        _apply_global(args)
        from genloom.core import train_cli

        return int(train_cli.main(argv[train_at + 1:]) or 0)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command in ("generate", "serve") and not any(e.startswith("-") for e in extra):
        args.overrides += extra  # `generate RUN --json key=value`: options after the flag
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _apply_global(args)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(_dispatch(args) or 0)
    except GenloomError as exc:
        print(f"genloom: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genloom: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `genloom plugins | head`: the reader left; stay quiet like other Unix tools
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if exc.filename is None:
            raise
        from genloom.core.train_cli import os_error_message

        print(f"genloom: {os_error_message(exc)}", file=sys.stderr)
        return 2


def _command_index(argv: list[str], command: str) -> int | None:
    """Index of ``command`` when it is the sub-command (the first argument that is no global option)."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--disable-plugin":
            i += 2
            continue
        if a.startswith("-"):
            i += 1
            continue
        return i if a == command else None
    return None


def _apply_global(args) -> None:
    if args.disable_plugin:
        current = [x for x in os.environ.get("GENLOOM_DISABLE_PLUGINS", "").split(",") if x]
        os.environ["GENLOOM_DISABLE_PLUGINS"] = ",".join(current + args.disable_plugin)
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")


def _dispatch(args):
    from genloom.core import commands

    return getattr(commands, "cmd_" + args.command.replace("-", "_"))(args)


if __name__ == "__main__":
    raise SystemExit(main())
