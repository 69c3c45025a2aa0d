"""Command-line entry point ``histo-gedl``.

This module only parses options and calls the library; each subcommand has
an ``_add_<name>`` function that declares its options and a ``_run_<name>``
function that calls into ``histo_gedl``. Errors that the library raises as
:class:`histo_gedl.errors.HistoGedlError` are printed as one line and exit
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from histo_gedl import __version__
from histo_gedl.errors import HistoGedlError

log = logging.getLogger(__name__)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="histo-gedl",
        description="Rotation-equivariant segmentation of whole-slide histopathology images.",
    )
    parser.add_argument("--version", action="version", version=f"histo-gedl {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="log more detail (-v: info, -vv: debug); the default logs warnings only",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


_SUBCOMMANDS: list = []


def _subcommand(function):
    _SUBCOMMANDS.append(function)
    return function


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except HistoGedlError as error:
        print(f"histo-gedl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"histo-gedl {args.command}: interrupted", file=sys.stderr)
        return 130


# Subcommands are registered below, one pair of functions each.


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
