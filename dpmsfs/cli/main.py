"""`dpmsfs` entry point: parse arguments, dispatch to one command module, map errors.

Each command lives in `cmd_<name>.py` with a `register(subparsers)` that defines its
arguments beside the function doing the work. Errors an operator can act on are
`DpmsError`s: printed as one line on stderr with the documented exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from dpmsfs import __version__
from dpmsfs.errors import EXIT_INTERRUPTED, EXIT_USAGE, DpmsError

# name -> (module, one-line help). Only the module of the command being run is imported:
# `dpmsfs log` or `restore` of one small file should not pay for pyfuse3 and trio.
COMMANDS: dict[str, tuple[str, str]] = {
    "mount": ("cmd_mount", "mount dpmsfs over a work directory"),
    "umount": ("cmd_umount", "unmount a dpmsfs work directory"),
    "status": ("cmd_status", "show the state and health of a work directory"),
    "snapshot": ("cmd_snapshot", "take a snapshot now (waits for pending changes)"),
    "snapshots": ("cmd_snapshots", "list snapshots"),
    "log": ("cmd_log", "the version history of one file"),
    "diff": ("cmd_diff", "what changed between two snapshots"),
    "restore": ("cmd_restore", "restore files, directories or the whole tree"),
    "verify": ("cmd_verify", "check the store"),
    "sync": ("cmd_sync", "push snapshots to the server now"),
    "drill": ("cmd_drill", "restore a random sample from the server and check it"),
    "prune": ("cmd_prune", "apply the retention policy: forget snapshots, reclaim space"),
    "pin": ("cmd_pin", "keep a snapshot whatever the retention policy"),
    "unpin": ("cmd_unpin", "let the retention policy apply to a snapshot again"),
}


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"dpmsfs.cli.{COMMANDS[name][0]}")


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The command named on the command line (skipping the global options)."""
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg == "--log-level":
            skip_next = True
        elif not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


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


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, the other commands are listed but not imported."""
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
    for name, (_, summary) in COMMANDS.items():
        if only is None or name == only:
            _load(name).register(subparsers)
        else:
            subparsers.add_parser(name, help=summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(_chosen_command(argv))
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
    except BrokenPipeError:
        # `dpmsfs snapshots | head`: the reader left; no traceback, and none at exit
        # when Python flushes stdout again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
