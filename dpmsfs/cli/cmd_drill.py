"""`dpmsfs drill [WORKDIR] [--files N] [--snapshot NAME] [--json]`: a restore drill.

Restores a random sample of files of a random older snapshot from the server into a
scratch directory, checks them byte for byte (against the local store when it still holds
that snapshot, and against the chunk ids the snapshot recorded), measures how long one
file and the whole sample took, records the result beside the store (shown by
`dpmsfs status` as `drill`) and reports it to the server for the fleet page. The server
comes from the work directory's configuration (`server`, `token_file`, `tls_ca`,
`tool_id`) or from --server/--tool/--token-file. Exit 0 when every file came back right,
1 when the drill failed. The daemon runs one every `drill_interval_days` (30 by default).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpmsfs.cli.cmd_restore import add_server_arguments
from dpmsfs.cli.common import add_workdir_arguments, human_bytes, load_config, open_store_readonly
from dpmsfs.config import Config
from dpmsfs.errors import EXIT_FAILURE, DpmsError, NotFoundError, UsageError

if TYPE_CHECKING:
    from dpmsfs.browse.source import RemoteSource

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "drill",
        help="restore a random sample from the server and check it (a restore drill)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_workdir_arguments(parser, required=False)
    parser.add_argument("--files", type=int, default=20, help="files to sample (default 20)")
    parser.add_argument("--snapshot", help="drill this snapshot instead of a random older one")
    parser.add_argument("--seed", type=int, help="random seed (repeatable drills, tests)")
    parser.add_argument("--no-report", action="store_true", help="do not report to the server")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_server_arguments(parser)
    parser.set_defaults(run=run_drill)


def open_source(args: argparse.Namespace, cfg: Config) -> RemoteSource:
    from dpmsfs.browse.source import open_server
    from dpmsfs.cli.cmd_restore import open_server_source

    if args.server:
        return open_server_source(args)
    if not cfg.server or cfg.token_file is None:
        raise UsageError("no server configured (`server` and `token_file`), nor --server given")
    return open_server(cfg.server, cfg.tool_id, cfg.token_file, cfg.tls_ca,
                       deadline=max(args.retry_seconds, 0.0))  # fmt: skip


def run_drill(args: argparse.Namespace) -> int:
    from dpmsfs import fleet_report
    from dpmsfs.browse import drill

    if args.files < 1:
        raise UsageError("--files must be at least 1")
    cfg = load_config(args)
    source = open_source(args, cfg)
    try:
        try:
            store = open_store_readonly(cfg)
        except NotFoundError:
            store = None  # nothing local to compare with: the chunk ids still are
        try:
            rng = random.Random(args.seed)
            result = drill.run_drill(
                source, store, sample=args.files, rng=rng, snapshot=args.snapshot
            )
        finally:
            if store is not None:
                store.close()
        if store is not None:
            drill.record_result(cfg.store, result)
        reported = ""
        if not args.no_report:
            report = fleet_report.build_report(_status(cfg), result.to_report())
            reported = fleet_report.send(source.backend, report)
    finally:
        source.close()
    if args.json:
        doc = {**result.to_report(), "compared_with": result.compared_with,
               "mismatches": result.mismatches, "report_error": reported}  # fmt: skip
        print(json.dumps(doc))
    else:
        verdict = "passed" if result.ok else "FAILED"
        print(f"dpmsfs: drill {verdict}: {result.files} files ({human_bytes(result.bytes)}) of "
              f"{result.snapshot or '-'} restored in {result.seconds:.2f} s (first file "
              f"{result.first_file_seconds:.3f} s), compared with "
              f"{result.compared_with or 'nothing'}")  # fmt: skip
        if result.message:
            print(f"dpmsfs: {result.message}", file=sys.stderr)
        if reported:
            print(f"dpmsfs: could not report to the server: {reported}", file=sys.stderr)
    return 0 if result.ok else EXIT_FAILURE


def _status(cfg: Config) -> dict[str, Any] | None:
    """The tool's status (alerts, sync lag) for the report; None if it cannot be read."""
    from dpmsfs.cli.cmd_status import collect

    if cfg.workdir == Path("/nonexistent"):
        return None
    try:
        return collect(cfg)
    except DpmsError as exc:
        log.info("no status for the report: %s", exc)
        return None
