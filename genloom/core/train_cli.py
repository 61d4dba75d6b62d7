"""``genloom train CONFIG [key=value ...] [--resume] [--run-dir DIR] [--overwrite]``.

Importing this module is cheap (no torch, no Lightning); :func:`main` imports
:mod:`genloom.core.training` only when it runs. Errors a user can act on
(:class:`~genloom.core.errors.GenloomError`) print as one paragraph and return exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from genloom.core.errors import GenloomError

DESCRIPTION = (
    "Train a model from a YAML config (or continue a run directory with --resume). Overrides are "
    "OmegaConf dot-list items, e.g. trainer.max_steps=500 backbone.n_layers=2 logger=csv."
)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``genloom train`` (for a parent CLI that builds its own sub-parser)."""
    parser.add_argument("config", help="a YAML config, or a run directory (with --resume: continue it)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (OmegaConf dot-list)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from RUN_DIR/checkpoints/last.ckpt exactly (weights, optimizer, schedule, data order, random state); "
                             "starts from scratch when there is no checkpoint yet")
    parser.add_argument("--run-dir", default=None, metavar="DIR",
                        help="where the run writes config, logs, checkpoints and weights (default: the config's run_dir, else runs/<config name>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start again in a run directory that already holds a run (removes its config, weights, tokenizer, "
                             "checkpoints and logs; other files are left alone)")
    parser.add_argument("--no-sample", action="store_true", help="do not print a generated sample at the end")
    return parser


def parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="genloom train", description=DESCRIPTION))


def main(argv: list[str] | None = None) -> int:
    """Run ``genloom train`` with ``argv`` (without the ``train`` word); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_intermixed_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Train from parsed arguments (as :func:`add_arguments` defines them)."""
    try:
        from genloom.core.training import train

        train(args.config, args.overrides, run_dir=args.run_dir, resume=args.resume, overwrite=args.overwrite,
              generate=not getattr(args, "no_sample", False))
    except GenloomError as exc:
        print(f"genloom: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # train() says what was kept; a bare one came before it started
        print(f"genloom: {str(exc) or 'interrupted before training started; nothing was written'}", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.filename is None:
            raise
        print(f"genloom: {os_error_message(exc)}", file=sys.stderr)
        return 2
    return 0


def os_error_message(exc: OSError) -> str:
    """One line for a file-system error a user can act on: what failed, on which path."""
    where = f"'{exc.filename}'" + (f" -> '{exc.filename2}'" if getattr(exc, "filename2", None) else "")
    return f"{exc.strerror or type(exc).__name__}: {where}"


if __name__ == "__main__":
    raise SystemExit(main())
