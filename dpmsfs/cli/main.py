"""`dpmsfs` entry point: parse arguments, dispatch to one command module, map errors.

Each command lives in `cmd_<name>.py` with a `register(subparsers)` that defines its
arguments beside the function doing the work. Errors an operator can act on are
`DpmsError`s: printed as one line on stderr with the documented exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from dpmsfs import __version__
from dpmsfs.cli import (
    cmd_diff,
    cmd_log,
    cmd_mount,
    cmd_restore,
    cmd_snapshot,
    cmd_snapshots,
    cmd_status,
    cmd_umount,
    cmd_verify,
)
from dpmsfs.errors import EXIT_INTERRUPTED, EXIT_USAGE, DpmsError

COMMANDS: list[ModuleType] = [
    cmd_mount,
    cmd_umount,
    cmd_status,
    cmd_snapshot,
    cmd_snapshots,
    cmd_log,
    cmd_diff,
    cmd_restore,
    cmd_verify,
]

EXIT_STATUS_HELP = """\
EXIT STATUS
  0  success
  1  the command ran and found a problem (for example damage found by verify)
  2  bad arguments or configuration
  3  a work directory, snapshot or path does not exist
  4  FUSE, the store or the server is unavailable
  5  already mounted, or locked by another process
  130 interrupted
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpmsfs",
        description="Versioned file system for test-equipment work directories.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dpmsfs {__version__}")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity on stderr (default: WARNING)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse (3.11) cannot take positionals after options ("restore W --snapshot S
        # PATH"); commands with a trailing PATH list collect them here.
        if hasattr(args, "paths") and not any(e.startswith("-") for e in extra):
            args.paths = [*args.paths, *extra]
        else:
            parser.parse_args(argv)  # reports the unrecognized arguments as usual
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result: int = args.run(args)
        return result
    except DpmsError as exc:
        print(f"dpmsfs: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dpmsfs: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
