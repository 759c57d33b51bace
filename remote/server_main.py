"""Command line of `dpmsfs-server`: `serve` (the default), `verify` and `token create`.

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
from pathlib import Path
from typing import Any

from remote import auth, names, server, verify
from remote.store import DiskStore

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CORRUPT = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_LISTEN = 4

EXIT_STATUS = """\
EXIT STATUS
  0  success (serve: stopped by SIGINT/SIGTERM; verify: every record sound;
     token create: the token was printed and stored)
  1  verify found corrupt records (they were moved to DIR/quarantine)
  2  usage error
  3  configuration error: data directory, tokens file or TLS files unusable
  4  cannot listen on the address (in use, not permitted, not a local address)
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
    p.add_argument("--ready-file", type=Path, help="write {url, pid} as JSON here once listening")
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


def _write_ready(path: Path, url: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}), encoding="utf-8")
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


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from remote.replication import Replicator

    address = _parse_listen(args.listen)
    if args.max_object_size <= 0:
        raise CliError(EXIT_USAGE, "--max-object-size must be positive")
    store = DiskStore(args.data)
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
    status = replicator.status if replicator else None
    app = server.App(store, tokens, args.max_object_size, replication=status)
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
    # uvicorn re-raises the signal it caught once it has shut down; a no-op handler here
    # makes that a clean exit (status 0) instead of death by SIGTERM.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
    log.info("serving %s from %s (server id %s)", url, args.data, store.server_id)
    if args.ready_file is not None:
        _write_ready(args.ready_file, url)
    if replicator is not None:
        replicator.start()
    try:
        asyncio.run(httpd.serve(sockets=[sock]))
    finally:
        if replicator is not None:
            replicator.stop()
        sock.close()
        app.shutdown()
        store.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return EXIT_OK


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["verify"]:
        parser, run, argv = _verify_parser(), run_verify, argv[1:]
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
