"""The ``vlafoundry`` command line: a thin dispatcher over the library.

Each sub-command lives in its own module under ``vlafoundry.cli`` exposing ``register(subparsers)``;
modules are imported only when needed so ``vlafoundry --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# sub-command -> module that registers it
_COMMANDS = {
    "data": "vlafoundry.cli.data",
    "pretrain": "vlafoundry.cli.train",
    "train": "vlafoundry.cli.train",
    "eval": "vlafoundry.cli.evaluate",
    "quickstart": "vlafoundry.cli.quickstart",
    "serve": "vlafoundry.cli.serve",
    "export": "vlafoundry.cli.export",
    "run": "vlafoundry.cli.run",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlafoundry",
        description="Build, train and evaluate vision-language-action models on BabyAI and Meta-World.",
    )
    from vlafoundry import __version__

    parser.add_argument("--version", action="version", version=f"vlafoundry {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    seen: set[str] = set()
    for module_name in _COMMANDS.values():
        if module_name in seen:
            continue
        seen.add(module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a sub-command whose module is not part of this build
            if exc.name == module_name:
                continue
            raise
        module.register(sub)
    return parser


def _unknown_option(parser: argparse.ArgumentParser, command: str, extra: list[str]) -> str | None:
    """For a command that takes ``--section.key VALUE`` overrides: the first extra ``--word`` that is neither a
    dotted key nor a top-level config key is a mistyped option (``--outt``), not an unknown config key."""
    import dataclasses

    from vlafoundry.config import override_keys, suggest
    from vlafoundry.train.config import ExperimentConfig

    top_level = {f.name for f in dataclasses.fields(ExperimentConfig)}
    for key in override_keys(extra):
        if "." in key or key in top_level:
            continue
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
        options = sorted({o for a in sub._actions for o in a.option_strings if o.startswith("--")})
        word = next(t for t in extra if t.startswith("--") and t[2:].split("=", 1)[0].replace("-", "_") == key)
        word = word.split("=", 1)[0]
        return (f"unknown option {word} for `vlafoundry {command}`" + suggest(word, options)
                + f" (options: {' '.join(options)}; config keys are dotted, e.g. --train.lr 3e-4, and listed by "
                + f"`vlafoundry {command if command in ('train', 'pretrain') else 'train'} --list-keys`)")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.error(f"unknown command {args.command!r}")
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    if getattr(args, "accepts_overrides", False):
        bad = _unknown_option(parser, args.command, extra)
        if bad:
            print(f"error: {bad}", file=sys.stderr)
            return 2
        args.overrides = extra
    try:
        rc = handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, OSError, RuntimeError) as exc:
        # Bad input (config, checkpoint, dataset, paraphrase file, disk full, non-finite training) is reported
        # as one line naming the file/key/tensor; VLAFOUNDRY_DEBUG=1 shows the traceback as well.
        if os.environ.get("VLAFOUNDRY_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
