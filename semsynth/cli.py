"""The `semsynth` command. Each subcommand is one `_cmd_<name>(sub)` function that declares its
arguments and sets `func`; the work itself lives in the library modules."""
from __future__ import annotations

import argparse
import sys


def _cmd_info(sub):
    p = sub.add_parser("info", help="list model presets, label spaces and where data/weights are looked up")

    def run(args):
        from . import __version__
        from .labels import available_spaces
        from .models import PRESETS, build_model, count_parameters
        from .utils import shared_dir

        print(f"semsynth {__version__}")
        print("model presets:")
        for name in sorted(PRESETS):
            print(f"  {name:16s} {count_parameters(build_model(name)):>12,} parameters")
        print("label spaces:", ", ".join(available_spaces()))
        print("shared dir:", shared_dir(), "(exists)" if shared_dir().is_dir() else "(missing)")

    p.set_defaults(func=run)


COMMANDS = [_cmd_info]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="semsynth", description="Photographs from semantic layouts.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as e:
        # User errors (bad input files, unknown presets, ...) get one clear line, not a traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"semsynth {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
