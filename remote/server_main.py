"""Command line of `dpmsfs-server`: `serve` (the default), `verify`, `prune` and `token create`.

`serve` runs the ASGI app (remote.server) under uvicorn on a socket we bind ourselves: port 0
works (the ready file tells the real port), SO_REUSEADDR is never set on Windows (there it
would let a second process bind the same port), and TLS uses our own context (TLS >= 1.2).

Operator mistakes (port in use, unreadable tokens file, missing TLS key) end in one line on
stderr and a documented exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import ssl
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from remote import admin_client, auth, names, prune, retention, server, verify
from remote.dirlock import DirectoryBusy, DirLock
from remote.metrics import ServerMetrics
from remote.store import DiskStore

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CORRUPT = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_LISTEN = 4
EXIT_BUSY = 5
EXIT_SERVER = 6

EXIT_STATUS = """\
EXIT STATUS
  0  success (serve: stopped by SIGINT/SIGTERM; verify: every record sound;
     token create: the token was printed and stored; prune: done)
  1  verify found corrupt records (they were moved to DIR/quarantine); prune could not
     decide safely (unreadable snapshot record, missing tree) and deleted nothing
  2  usage error
  3  configuration error: data directory, tokens file or TLS files unusable; prune
     --server: the token file is unreadable or the token is not an admin token
  4  cannot listen on the address (in use, not permitted, not a local address)
  5  the data directory is in use (serve and offline prune never run together);
     prune --server: another prune is running on that server
  6  prune --server: the server is unreachable or answered an unexpected error
"""


class CliError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dpmsfs-server",
        description="Serve a dpmsfs object store over HTTP(S). "
        "Subcommand: `dpmsfs-server verify --data DIR` re-hashes every record.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path, help="data directory (created if absent)")
    p.add_argument("--listen", default="127.0.0.1:8765", help="HOST:PORT (default %(default)s)")
    p.add_argument(
        "--tokens", type=Path, help="tokens file (default DIR/tokens.json, created if absent)"
    )
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain; enables HTTPS")
    p.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    p.add_argument(
        "--max-object-size",
        type=int,
        default=server.DEFAULT_MAX_OBJECT_SIZE,
        help="largest accepted object in bytes (default %(default)s)",
    )
    p.add_argument(
        "--ready-file",
        type=Path,
        help="write {url, pid[, metrics_url]} as JSON here once listening",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus GET /metrics, without a token, on this second listener "
        "(port 0 picks one; default: off)",
    )
    p.add_argument(
        "--prune-min-grace",
        default="2h",
        metavar="D",
        help="shortest grace an online prune may use (default %(default)s); tools "
        "re-confirm objects every D/2, so a sync pass must finish within D/2 "
        "(docs/design.md, Online prune)",
    )
    p.add_argument("--peer", help="URL of the HA peer to replicate to (continuously)")
    p.add_argument("--peer-token-file", type=Path, help="file holding the token for --peer")
    p.add_argument(
        "--peer-interval", type=float, default=2.0, help="seconds between replication passes"
    )
    p.add_argument("--peer-ca", type=Path, help="CA bundle to check the peer's certificate")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _token_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dpmsfs-server token create",
        description="Create a token, store its SHA-256 in the tokens file, print the token.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path, help="data directory")
    p.add_argument("--tokens", type=Path, help="tokens file (default DIR/tokens.json)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--tool", help="a tool token for this namespace (tool id)")
    who.add_argument("--admin", action="store_true", help="an admin token (every namespace)")
    who.add_argument("--replicate", action="store_true", help="a replicate token (for the HA peer)")
    return p


def _verify_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dpmsfs-server verify",
        description="Re-hash every object and ref; move corrupt ones to DIR/quarantine so "
        "that tools re-send them.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path, help="data directory")
    p.add_argument("--namespace", help="only this namespace")
    p.add_argument(
        "--no-quarantine", action="store_true", help="report only; leave corrupt records"
    )
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _prune_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dpmsfs-server prune",
        description="Forget a tool's snapshot refs by a retention policy (the tool's rules: "
        "restic's --keep-* counted in snapshots that exist), then delete the mappings no kept "
        "snapshot reaches and the blobs no tool maps. With --data the server must be stopped; "
        "with --server URL the running server prunes (admin token only).",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_argument_group("where (one of)")
    where.add_argument("--data", type=Path, help="data directory of a stopped server")
    where.add_argument(
        "--server",
        metavar="URL",
        action="append",
        help="a running server (needs --token-file); repeat for each server of an HA pair",
    )
    p.add_argument("--token-file", type=Path, help="file holding an admin token (--server)")
    p.add_argument("--ca", type=Path, help="CA bundle to check the server's certificate")
    p.add_argument("--tool", required=True, help="the tool id (namespace) to prune")
    p.add_argument("--dry-run", action="store_true", help="show what would go; change nothing")
    for rule in retention.COUNT_RULES:
        p.add_argument(f"--keep-{rule}", type=int, metavar="N", help=f"keep {rule} N")
    p.add_argument("--keep-within", metavar="D", help="keep all within D of the newest (14d)")
    p.add_argument(
        "--pin-label",
        action="append",
        default=[],
        metavar="LABEL",
        help="always keep snapshots with this label (pre-restore always is)",
    )
    p.add_argument(
        "--grace",
        default="24h",
        metavar="D",
        help="keep objects uploaded or confirmed to a tool within D (default %(default)s)",
    )
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise CliError(EXIT_USAGE, f"--listen must be HOST:PORT, got {value!r}")
    return host, int(port)


def _tokens(args: argparse.Namespace) -> auth.TokenTable:
    path: Path = args.tokens or args.data / "tokens.json"
    if args.tokens is None and not path.exists():
        auth.create_default(path)
        print(f"dpmsfs-server: created an admin token in {path}", file=sys.stderr)
    try:
        return auth.TokenTable(path)
    except auth.TokenFileError as exc:
        raise CliError(EXIT_CONFIG, str(exc)) from exc


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.tls_cert is None and args.tls_key is None:
        return None
    if args.tls_cert is None:
        raise CliError(EXIT_USAGE, "--tls-key needs --tls-cert")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(EXIT_CONFIG, f"cannot load TLS certificate/key: {exc}") from exc
    return ctx


def _write_ready(path: Path, url: str, metrics_url: str | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    doc: dict[str, Any] = {"url": url, "pid": os.getpid()}
    if metrics_url is not None:
        doc["metrics_url"] = metrics_url
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, path)


def _bind(address: tuple[str, int]) -> socket.socket:
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit TCP_NODELAY from this one (Linux). Without it, every
        # answer on a kept-alive connection waited 40 ms for the client's delayed ACK
        # (Nagle: uvicorn writes headers and body separately, and sets the option only on
        # sockets it binds itself): 45 ms per request instead of 1 ms, measured.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket, tls: bool) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in str(host) else str(host)
    return f"{'https' if tls else 'http'}://{host}:{port}"


def _peer_token(args: argparse.Namespace) -> str:
    if args.peer_token_file is None:
        raise CliError(EXIT_USAGE, "--peer needs --peer-token-file")
    try:
        token = args.peer_token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CliError(EXIT_CONFIG, f"cannot read {args.peer_token_file}: {exc}") from exc
    if not token:
        raise CliError(EXIT_CONFIG, f"{args.peer_token_file} is empty")
    return token


def _lock(root: Path) -> DirLock:
    try:
        return DirLock(root).acquire()
    except DirectoryBusy as exc:
        raise CliError(EXIT_BUSY, str(exc)) from None
    except OSError as exc:
        raise CliError(EXIT_CONFIG, f"cannot use data directory {root}: {exc}") from None


def run_serve(args: argparse.Namespace) -> int:
    address = _parse_listen(args.listen)
    metrics_address = _parse_listen(args.metrics) if args.metrics else None
    lock = _lock(args.data)
    try:
        return _serve(args, address, metrics_address)
    finally:
        lock.release()


def _serve(
    args: argparse.Namespace,
    address: tuple[str, int],
    metrics_address: tuple[str, int] | None,
) -> int:
    import uvicorn

    from remote.replication import Replicator

    if args.max_object_size <= 0:
        raise CliError(EXIT_USAGE, "--max-object-size must be positive")
    try:
        min_grace_s = retention.parse_duration(args.prune_min_grace)
    except retention.PolicyError as exc:
        raise CliError(EXIT_USAGE, f"--prune-min-grace: {exc}") from None
    if min_grace_s < 2:
        raise CliError(EXIT_USAGE, "--prune-min-grace must be at least 2s")
    store = DiskStore(args.data)
    store.touch_resolution_s = min_grace_s // 2
    try:
        store.prepare()
    except OSError as exc:
        raise CliError(EXIT_CONFIG, f"cannot use data directory {args.data}: {exc}") from exc
    tokens = _tokens(args)
    ctx = _tls(args)
    replicator = None
    if args.peer:
        tls_verify: bool | str = str(args.peer_ca) if args.peer_ca else True
        replicator = Replicator(
            store, [args.peer], _peer_token(args), args.peer_interval, tls_verify=tls_verify
        )
    try:
        sock = _bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CliError(EXIT_LISTEN, f"cannot listen on {args.listen}: {reason}") from None
    sockets = [sock]
    if metrics_address is not None:
        try:
            sockets.append(_bind(metrics_address))
        except OSError as exc:
            sock.close()
            reason = exc.strerror or str(exc)
            raise CliError(EXIT_LISTEN, f"cannot listen on {args.metrics}: {reason}") from None
    status = replicator.status if replicator else None
    metrics = _server_metrics(store, replicator)
    metrics_port = sockets[1].getsockname()[1] if len(sockets) > 1 else None
    app = server.App(
        store,
        tokens,
        args.max_object_size,
        replication=status,
        metrics=metrics,
        metrics_port=metrics_port,
    )
    app.prune_min_grace_s = min_grace_s
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_keep_alive=120,
        server_header=False,
        date_header=True,
    )
    config.load()
    config.ssl = ctx  # our context: TLS >= 1.2 (uvicorn's own has no minimum version knob)
    httpd = uvicorn.Server(config)
    url = _url(sock, ctx is not None)
    metrics_url = _url(sockets[1], ctx is not None) + "/metrics" if len(sockets) > 1 else None
    # uvicorn re-raises the signal it caught once it has shut down; a no-op handler here
    # makes that a clean exit (status 0) instead of death by SIGTERM.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
    log.info("serving %s from %s (server id %s)", url, args.data, store.server_id)
    if args.ready_file is not None:
        _write_ready(args.ready_file, url, metrics_url)
    if replicator is not None:
        replicator.start()
    try:
        asyncio.run(httpd.serve(sockets=sockets))
    finally:
        if replicator is not None:
            replicator.stop()
        for one in sockets:
            one.close()
        app.shutdown()
        store.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return EXIT_OK


def _server_metrics(store: DiskStore, replicator: Any) -> ServerMetrics:
    """Request counters, plus per-tool totals and the peer lag read at scrape time."""

    def per_tool(column: int) -> dict[str, int]:
        out: dict[str, int] = {}
        for ns in store.namespaces():
            st = store.stats(ns)
            out[ns] = (st.bytes, st.objects)[column]
        return out

    def lag() -> float | None:
        if replicator is None:
            return None
        return float(replicator.status()["lag_seconds"])

    return ServerMetrics(
        stored_bytes=lambda: per_tool(0),
        stored_objects=lambda: per_tool(1),
        replication_lag=lag,
    )


def _ignore(signum: int, frame: Any) -> None:
    pass


def run_token(args: argparse.Namespace) -> int:
    path: Path = args.tokens or args.data / "tokens.json"
    if args.tool is not None:
        if not names.is_namespace(args.tool):
            raise CliError(EXIT_USAGE, f"invalid tool id {args.tool!r}")
        role, spaces = "tool", [names.namespace_dir(args.tool)]
    else:
        role, spaces = ("admin" if args.admin else "replicate"), ["*"]
    if not path.parent.is_dir():
        raise CliError(EXIT_CONFIG, f"{path.parent} is not a directory")
    try:
        token = auth.add_token(path, role, spaces if spaces != ["*"] else "*")
    except (auth.TokenFileError, OSError) as exc:
        raise CliError(EXIT_CONFIG, str(exc)) from exc
    print(token)
    return EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    if not (args.data / "ns").is_dir() or not (args.data / "pool").is_dir():
        raise CliError(EXIT_CONFIG, f"{args.data} is not a dpmsfs-server data directory")
    if args.namespace is not None and not names.is_namespace(args.namespace):
        raise CliError(EXIT_USAGE, f"invalid namespace {args.namespace!r}")
    store = DiskStore(args.data)
    summary = verify.Summary()
    for finding in verify.scrub(store, summary, args.namespace, not args.no_quarantine):
        where = f" -> {finding.moved_to}" if finding.moved_to else ""
        print(f"corrupt {finding.kind} {finding.where}: {finding.reason}{where}")
    print(
        f"checked {summary.blobs} blobs, {summary.mappings} mappings, {summary.refs} refs: "
        f"{summary.corrupt} corrupt"
    )
    return EXIT_CORRUPT if summary.corrupt else EXIT_OK


def run_prune(args: argparse.Namespace) -> int:
    if args.data is not None and (
        not (args.data / "ns").is_dir() or not (args.data / "pool").is_dir()
    ):
        raise CliError(EXIT_CONFIG, f"{args.data} is not a dpmsfs-server data directory")
    if not names.is_namespace(args.tool):
        raise CliError(EXIT_USAGE, f"invalid tool id {args.tool!r}")
    overrides = {f"keep_{r}": getattr(args, f"keep_{r}") for r in retention.COUNT_RULES}
    overrides["keep_within"] = args.keep_within
    try:
        policy = retention.with_overrides(retention.Policy(), overrides)
        policy = replace(policy, pin_labels=tuple(args.pin_label))
        grace_s = retention.parse_duration(args.grace)
        if policy.empty:
            raise retention.PolicyError(
                "give at least one --keep-* rule (the server has no default policy)"
            )
    except retention.PolicyError as exc:
        raise CliError(EXIT_USAGE, str(exc)) from None
    if args.server is not None:
        return _prune_online(args, policy, grace_s)
    if args.data is None:
        raise CliError(EXIT_USAGE, "give --data DIR (server stopped) or --server URL")
    lock = _lock(args.data)
    store = DiskStore(args.data)
    try:
        if not store.has_namespace(args.tool):
            raise CliError(EXIT_CONFIG, f"no namespace {args.tool!r} in {args.data}")
        try:
            doc = prune.run(
                store,
                args.tool,
                policy,
                now_s=int(time.time()),
                grace_s=grace_s,
                dry_run=args.dry_run,
            )
        except prune.PruneError as exc:
            print(f"dpmsfs-server: prune stopped, nothing deleted: {exc}", file=sys.stderr)
            return EXIT_CORRUPT
    finally:
        store.close()
        lock.release()
    for line in prune.summary_lines(doc):
        print(line)
    return EXIT_OK


def _prune_online(args: argparse.Namespace, policy: retention.Policy, grace_s: int) -> int:
    """Ask a running server to prune (POST /v2/<tool>/prune with the admin token)."""
    if args.data is not None:
        raise CliError(EXIT_USAGE, "give either --data or --server, not both")
    if args.token_file is None:
        raise CliError(EXIT_USAGE, "--server needs --token-file (an admin token)")
    try:
        token = args.token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CliError(EXIT_CONFIG, f"cannot read {args.token_file}: {exc}") from None
    if not token:
        raise CliError(EXIT_CONFIG, f"{args.token_file} is empty")
    request = {**policy.as_dict(), "grace": retention.format_duration(grace_s)}
    request.pop("paths", None)
    request["dry_run"] = bool(args.dry_run)
    code = EXIT_OK
    for url in args.server:
        if len(args.server) > 1:
            print(f"{url}:")
        code = max(code, _prune_one(url, token, args, request))
    return code


def _prune_one(url: str, token: str, args: argparse.Namespace, request: dict[str, Any]) -> int:
    try:
        status, doc = admin_client.post_prune(url, token, args.tool, request, args.ca)
    except admin_client.ClientError as exc:
        raise CliError(EXIT_SERVER, str(exc)) from None
    if status == 200:
        for line in prune.summary_lines(doc):
            print(line)
        return EXIT_OK
    message = f"{url} answered {status} {doc.get('error', '')}: {doc.get('message', '')}"
    if status == 422:  # prune_unsafe: nothing was deleted
        reason = doc.get("message")
        print(f"dpmsfs-server: prune stopped, nothing deleted: {reason}", file=sys.stderr)
        return EXIT_CORRUPT
    if status == 409:
        raise CliError(EXIT_BUSY, message)
    if status in (401, 403):
        raise CliError(EXIT_CONFIG, message)
    if status in (400, 404):
        raise CliError(EXIT_USAGE, message)
    raise CliError(EXIT_SERVER, message)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["verify"]:
        parser, run, argv = _verify_parser(), run_verify, argv[1:]
    elif argv[:1] == ["prune"]:
        parser, run, argv = _prune_parser(), run_prune, argv[1:]
    elif argv[:2] == ["token", "create"]:
        parser, run, argv = _token_parser(), run_token, argv[2:]
    else:
        if argv[:1] == ["serve"]:
            argv = argv[1:]
        parser, run = _serve_parser(), run_serve
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    logging.basicConfig(
        level=getattr(args, "log_level", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return run(args)
    except CliError as exc:
        print(f"dpmsfs-server: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
