"""`dpmsfs prune WORKDIR [--dry-run] [--keep-* N] [--keep-within D] [--json]`.

Applies the work directory's retention policy (``[retention]`` in its configuration, or
the fab default), restic's flags replacing its rules for this run: forgets the snapshots
the policy does not keep and reclaims their space. Through the daemon when it runs (it
holds the store; capture, sync and `.snapshots` reads go on meanwhile), else directly.
"""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

from dpmsfs import control, mountinfo
from dpmsfs.cli.common import add_workdir_arguments, human_bytes, load_config
from dpmsfs.cli.progress import PhaseProgress, wanted
from dpmsfs.config import Config
from dpmsfs.store.evicted import parse_size
from dpmsfs.store.retention import COUNT_RULES, Policy, with_overrides


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "prune", help="forget snapshots the retention policy does not keep, reclaim space"
    )
    add_workdir_arguments(parser)
    parser.add_argument("--dry-run", "-n", action="store_true",
                        help="only say what would be removed and reclaimed")  # fmt: skip
    parser.add_argument("--keep-last", type=int, metavar="N", help="keep the N newest snapshots")
    for rule in COUNT_RULES[1:]:
        period = {"daily": "day"}.get(rule, rule.removesuffix("ly"))
        parser.add_argument(
            f"--keep-{rule}",
            type=int,
            metavar="N",
            help=f"keep the newest snapshot of each of the last N {period}s that have one",
        )
    parser.add_argument(
        "--keep-within",
        metavar="DURATION",
        help="keep every snapshot this close to the newest one (48h, 30d, 2w, 1y6m)",
    )
    parser.add_argument(
        "--budget",
        metavar="SIZE",
        help="local budget for this run (500M, 40G, 2T): the oldest snapshots the server "
        "confirmed become server-only until the store is under it ([retention] "
        "local_budget_* otherwise)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(run=run_prune)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    given: dict[str, Any] = {f"keep_{r}": getattr(args, f"keep_{r}") for r in COUNT_RULES}
    given["keep_within"] = args.keep_within
    return {k: v for k, v in given.items() if v is not None}


def run_prune(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    policy = with_overrides(cfg.retention, overrides(args))
    budget_bytes = parse_size(args.budget) if args.budget is not None else None
    result = apply(cfg, policy, args.dry_run, overrides(args), budget_bytes,
                   show_progress=wanted(args.json))  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(render(result))
    return 0


def apply(
    cfg: Config,
    policy: Policy,
    dry_run: bool,
    given: dict[str, Any],
    budget_bytes: int | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Through the daemon when it runs (no progress bar then: the reply comes at the end),
    else here, with a bar per phase on a terminal (cli/progress.py)."""
    if mountinfo.is_dpmsfs_mount(cfg.workdir):
        request = {"cmd": "prune", "dry_run": dry_run, "overrides": given,
                   "budget_bytes": budget_bytes}  # fmt: skip
        reply = control.call(cfg.control_socket, request, timeout=None)
        result: dict[str, Any] = reply["prune"]
        return result
    from dpmsfs import prune  # lmdb, the capture state: only offline
    from dpmsfs.cli.common import open_store_writable

    store = open_store_writable(cfg)
    try:
        with PhaseProgress(show_progress) as bar:
            done = prune.prune(store, policy, dry_run, budget=cfg.local_budget,
                               budget_bytes=budget_bytes, progress=bar.update)  # fmt: skip
        return done.as_dict()
    finally:
        store.close()


def _name_time(name: str) -> str:
    try:
        when = datetime.datetime.strptime(name[:18], "%Y-%m-%dT%H%M%SZ")
    except ValueError:
        return ""
    return when.strftime("%a")


def render(r: dict[str, Any]) -> str:
    verb = "to remove" if r["dry_run"] else "removed"
    lines = [f"policy: {r['policy']}"]
    for item in r["kept"]:
        lines.append(f"keep    {item['name']:<22} {_name_time(item['name'])}  "
                     f"{', '.join(item['reasons'])}")  # fmt: skip
    for name in r["removed"]:
        lines.append(f"remove  {name:<22} {_name_time(name)}")
    for name, patterns in r["trimmed"].items():
        word = "would trim" if r["dry_run"] else "trimmed"
        lines.append(f"{word} {name}: without {', '.join(patterns)}")
    ev = r.get("eviction")
    if ev:
        word = "would become" if r["dry_run"] else "now"
        for name in ev["evicted"]:
            lines.append(f"server-only {name:<22} ({word} server-only: data on {ev['server']})")
        if ev["reason"]:
            lines.append(f"local budget ({ev['budget']}): {ev['reason']}")
        if ev["blocked"]:
            lines.append(f"local budget: cannot meet it: {ev['blocked']}")
    c = r["collect"]
    reclaimed = human_bytes(c["reclaimed_bytes"])
    lines.append(
        f"snapshots: {len(r['kept'])} kept, {len(r['forgotten'])} {verb}; "
        + (f"about {reclaimed} to reclaim ({c['dead_objects']} objects)" if r["dry_run"] else
           f"reclaimed {reclaimed} ({c['dead_objects']} objects, {c['packs_deleted']} packs "
           f"deleted, {c['packs_repacked']} repacked) in {c['seconds']:.1f} s")
    )  # fmt: skip
    return "\n".join(lines)
